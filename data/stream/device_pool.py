"""The feed without the host: decoded volumes live on the training device and regions are cut there.

With `data.device_pool_gib` > 0 the data workers only read and decode shards. Each decoded volume crosses to the
device once (on CUDA from a pinned buffer, on a side stream the step's stream waits for on the device: no host sync)
and enters a pool of volumes on the device (`VolumePool`, the same staggered lifetimes, distinct volumes per batch and
foreground-biased corners as the host pool, its arrays device tensors). A batch is the pool's (volume, corner) picks:
the regions are sliced from the pooled volumes and stacked on the device, so no region is ever copied on the host,
and the device-side views (`data/views/pipeline.py`) then cut their crops from those regions (regions, then views).

Host-to-device bytes per region are a volume's bytes over the regions it serves (20 MB / 200 = 0.1 MB for a 1.5 mm
body CT) instead of the region's own (1.77 MB for 96³ int16); the host's work per region is 1/`regions_per_volume` of
a decode plus a slice and its launch.

The pool takes volumes from the workers in turn (worker 0, 1, ..., 0, ...), never as they happen to arrive, and
draws its picks from a generator of (seed, rank): the batches are a pure function of (seed, rank, resume step),
however the workers' threads are scheduled. With a CPU as the device the same code runs (the volumes stay where
they were decoded), which is what the tests and the CPU twins exercise; the meta device measures the host's share
alone (`voxfm bench data`).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from voxfm.data.stream.loader import _RUNNING
from voxfm.data.stream.pool import FeedCounters, Volume, VolumePool
from voxfm.data.stream.regions import RegionStream
from voxfm.data.stream.samples import UNPROMOTABLE
from voxfm.data.stream.skips import SkipCounter, UnreadableShards

QUEUED_VOLUMES = 2  # decoded volumes each worker keeps ready (on CUDA: in pinned memory)
_END = object()


@dataclass
class WorkerState:
    """What one worker had read and skipped when it handed over a volume (its counters, as Python values)."""

    skipped: int = 0
    read_bytes: int = 0
    reads: int = 0


def host_tensor(array: np.ndarray, stage: bool, pin: bool) -> torch.Tensor:
    """A decoded volume as a tensor the device copy reads: `stage`d, copied once into a fresh tensor (`pin`ned: the
    CUDA path, whose copy to the device must read page-locked memory), else the array itself. uint16 and uint32 widen
    (torch cannot promote them in a batch)."""
    wide = UNPROMOTABLE.get(array.dtype)
    if wide is not None:
        array = array.astype(wide)
    if not stage:
        return torch.from_numpy(np.ascontiguousarray(array))
    host = torch.empty(array.shape, dtype=torch.from_numpy(array[:0, :0, :0]).dtype, pin_memory=pin)
    np.copyto(host.numpy(), array)
    return host


class VolumeFeed:
    """Decoded volumes (array: a host tensor, see `host_tensor`) of `n_workers` worker threads (0: the caller's
    thread), taken in turn; each comes with its worker's `WorkerState`."""

    def __init__(self, stream: RegionStream, n_workers: int, stage: bool, pin: bool):
        self.stream, self.n_workers, self.stage, self.pin = stream, n_workers, stage, pin

    def _worker(self, worker: int) -> Iterator[tuple[Volume, WorkerState]]:
        counters, skips = FeedCounters(), SkipCounter()
        for volume in self.stream.volumes(worker, max(self.n_workers, 1), counters, skips):
            volume.array = host_tensor(volume.array, self.stage, self.pin)
            yield volume, WorkerState(skips.count, counters.read_bytes, counters.reads)

    def __iter__(self) -> Iterator[tuple[Volume, WorkerState]]:
        if self.n_workers == 0:
            yield from self._worker(0)
            return
        queues = [queue.Queue(maxsize=QUEUED_VOLUMES) for _ in range(self.n_workers)]
        stop = threading.Event()

        def offer(q: queue.Queue, item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work(worker: int) -> None:
            try:
                for item in self._worker(worker):
                    if not offer(queues[worker], item):
                        return
                offer(queues[worker], _END)
            except BaseException as err:  # surfaced in the training thread, not lost in a worker
                offer(queues[worker], err)

        threads = [
            threading.Thread(target=work, args=(i,), daemon=True, name=f"voxfm-volumes-{i}")
            for i in range(self.n_workers)
        ]
        for t in threads:
            t.start()
        _RUNNING[id(stop)] = (stop, threads)
        try:
            yield from _in_turn(queues)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
            _RUNNING.pop(id(stop), None)


def _in_turn(queues: list[queue.Queue]) -> Iterator:
    """Items from each queue in turn, skipping queues whose worker ended; a worker's error is raised here."""
    live = list(range(len(queues)))
    while live:
        for worker in list(live):
            item = queues[worker].get()
            if item is _END:
                live.remove(worker)
                continue
            if isinstance(item, UnreadableShards):
                raise item
            if isinstance(item, BaseException):
                raise RuntimeError(f"a data-loader thread failed: {type(item).__name__}: {item}") from item
            yield item


class ToDevice:
    """Host volume → device tensor. CUDA: copied on a side stream, the compute stream waits on the device; the
    pinned host copy is released once its copy has finished. CPU: the host tensor itself. Counts the bytes sent."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sent = 0
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.copying: list[tuple[torch.cuda.Event, torch.Tensor]] = []

    def __call__(self, host: torch.Tensor) -> torch.Tensor:
        self.sent += host.nbytes
        if self.side is None:
            return host if self.device.type == "cpu" else host.to(self.device)
        self.copying = [(done, h) for done, h in self.copying if not done.query()]  # their copies still running
        with torch.cuda.stream(self.side):
            moved = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.side)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(done)
        moved.record_stream(compute)  # made on the side stream, read and freed on the compute stream
        self.copying.append((done, host))
        return moved


@dataclass
class DevicePoolFigures:
    """The pool's running figures, for `voxfm bench data` and the logs: regions cut, bytes sent to the device,
    bytes the pool holds."""

    regions: int = 0
    sent_bytes: int = 0
    held_bytes: int = 0


class DevicePoolLoader:
    """Batches {"region": [B, 1, *R] on `device`, "low", "high": [B] on `device`, bookkeeping as `collate_regions`}
    cut from a pool of decoded volumes on `device` within `budget_bytes` (at most `max_volumes`; default: the
    stream's `device_pool_volumes`). `stage`: volumes are copied into a fresh host tensor before they go (default:
    on CUDA, where that tensor is pinned); the meta device (`voxfm bench data`) then counts every host cost."""

    def __init__(
        self,
        stream: RegionStream,
        batch_size: int,
        num_workers: int,
        device: torch.device,
        budget_bytes: float,
        max_volumes: int | None = None,
        stage: bool | None = None,
    ):
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"data.batch_size={batch_size}, data.num_workers={num_workers}: expected >= 1 and >= 0")
        self.stream, self.batch_size, self.num_workers = stream, batch_size, num_workers
        self.device, self.budget = torch.device(device), budget_bytes
        self.max_volumes = max_volumes or stream.device_pool_volumes or stream.pool_volumes
        if stream.distinct is not None:  # a small set: no copies of its volumes (said once by the stream)
            self.max_volumes = min(self.max_volumes, stream.distinct)
        self.stage = self.device.type == "cuda" if stage is None else stage  # the bench stages on the meta device
        self.figures = DevicePoolFigures()

    def __iter__(self) -> Iterator[dict]:
        rank, _ = self.stream._rank_world()
        if self.device.type == "cuda" and self.device.index is None:  # the rank's GPU, chosen by now
            self.device = torch.device("cuda", torch.cuda.current_device())
        to_device = ToDevice(self.device)
        states: dict[int, WorkerState] = {}
        feed = iter(VolumeFeed(self.stream, self.num_workers, self.stage, pin=self.device.type == "cuda"))

        def on_device() -> Iterator[Volume]:
            for n, (volume, state) in enumerate(feed):
                states[n % max(self.num_workers, 1)] = state
                volume.array = to_device(volume.array)
                yield volume

        pool = VolumePool(
            on_device(),
            self.stream.region_size,
            self.stream.regions_per_volume,
            self.budget,
            self.max_volumes,
            self.stream.foreground_prob,
            np.random.default_rng([self.stream.seed, rank, 2]),
        )
        try:
            for group in pool.groups(self.batch_size):
                self.figures.regions += len(group)
                self.figures.sent_bytes, self.figures.held_bytes = to_device.sent, pool.held_bytes
                yield self._batch(group, states)
        finally:
            close = getattr(feed, "close", None)
            if close is not None:
                close()

    def _batch(self, group: list[tuple[torch.Tensor, Volume]], states: dict[int, WorkerState]) -> dict:
        regions = [region for region, _ in group]
        dtype = functools.reduce(torch.promote_types, (r.dtype for r in regions))
        pin = self.device.type == "cuda"
        bounds = torch.tensor([[v.low, v.high] for _, v in group], dtype=torch.float32, pin_memory=pin)
        bounds = bounds.to(self.device, non_blocking=True)  # pinned: the copy never waits on the host
        return {
            "region": torch.stack([r if r.dtype == dtype else r.to(dtype) for r in regions])[:, None],
            "low": bounds[:, 0],
            "high": bounds[:, 1],
            "modality": [v.modality for _, v in group],
            "source": [v.source for _, v in group],
            "worker": 0,  # one pool per rank: the counts below are all its workers'
            "skipped": sum(s.skipped for s in states.values()),
            "volumes": len({v.key for _, v in group}),
            "read_bytes": sum(s.read_bytes for s in states.values()),
            "reads": sum(s.reads for s in states.values()),
        }
