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
draws its picks from a generator of (seed, rank): the batches are a pure function of (seed, rank), however the
workers' threads are scheduled. Each batch carries the state that rebuilds the pool after it (`feed_state`: the
volumes held, their regions left and their samples' positions in the workers' streams, the pool's generator); a
checkpoint keeps the last trained batch's (`pretrain/callbacks/feed_state.py`), and a resumed run re-reads the held
volumes (each worker's stream restarted at its oldest one, data/stream/sources.py) and draws exactly the batches the
uninterrupted run would have. With a CPU as the device the same code runs (the volumes stay where
they were decoded), which is what the tests and the CPU twins exercise; the meta device measures the host's share
alone (`voxfm bench data`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from voxfm.data.stream.device_feed import PinnedBuffers
from voxfm.data.stream.pool import Volume, VolumePool
from voxfm.data.stream.pool_state import feed_state, replay_plan, replay_starts, stream_signature
from voxfm.data.stream.regions import RegionStream
from voxfm.data.stream.skips import UnreadableShards
from voxfm.data.stream.volume_feed import MAX_COPYING, VolumeFeed, WorkerState, staging_count


class ToDevice:
    """A volume's host tensor → its device tensor; the volume's staging buffer goes back to `buffers` once its copy is
    done. CUDA: copied on a side stream, the compute stream waits on the device (no host sync); beyond `MAX_COPYING`
    copies in flight the host waits for the oldest. CPU: the host tensor itself. Counts the bytes sent."""

    def __init__(self, device: torch.device, buffers: PinnedBuffers | None):
        self.device, self.buffers = device, buffers
        self.sent = 0
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.copying: list[tuple[torch.cuda.Event, torch.Tensor | None]] = []

    def _give(self, staging: torch.Tensor | None) -> None:
        if staging is not None and self.buffers is not None:
            self.buffers.give(staging)

    def __call__(self, volume: Volume) -> torch.Tensor:
        host, staging = volume.array, volume.staging
        volume.staging = None
        self.sent += host.nbytes
        if self.side is None:
            moved = host if self.device.type == "cpu" else host.to(self.device)
            if self.device.type != "cpu":  # a synchronous copy (the meta device): the buffer is free again
                self._give(staging)
            return moved
        while self.copying and (self.copying[0][0].query() or len(self.copying) >= MAX_COPYING):
            done, buffer = self.copying.pop(0)
            done.synchronize()  # at once when its copy has finished
            self._give(buffer)
        with torch.cuda.stream(self.side):
            moved = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.side)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(done)
        moved.record_stream(compute)  # made on the side stream, read and freed on the compute stream
        self.copying.append((done, staging))
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
    stream's `device_pool_volumes`). `stage`: volumes are copied into reused staging buffers before they go (default:
    on CUDA, where they are pinned; never on a CPU, whose pool holds the host tensors); the meta device
    (`voxfm bench data`) then counts every host cost."""

    def __init__(
        self,
        stream: RegionStream,
        batch_size: int,
        num_workers: int,
        device: torch.device,
        budget_bytes: float,
        max_volumes: int | None = None,
        stage: bool | None = None,
        resume: dict[int, dict] | None = None,
    ):
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"data.batch_size={batch_size}, data.num_workers={num_workers}: expected >= 1 and >= 0")
        self.stream, self.batch_size, self.num_workers = stream, batch_size, num_workers
        self.device, self.budget = torch.device(device), budget_bytes
        self.max_volumes = max_volumes or stream.device_pool_volumes or stream.pool_volumes
        if stream.distinct is not None:  # a small set: no copies of its volumes (said once by the stream)
            self.max_volumes = min(self.max_volumes, stream.distinct)
        stage = self.device.type == "cuda" if stage is None else stage  # the bench stages on the meta device
        self.stage = stage and self.device.type != "cpu"  # on a CPU the pool holds the host tensors themselves
        self.figures = DevicePoolFigures()
        self.resume = resume  # rank → the state `feed_state` saved: the stream goes on from there

    def __iter__(self) -> Iterator[dict]:
        rank, _ = self.stream._rank_world()
        if self.device.type == "cuda" and self.device.index is None:  # the rank's GPU, chosen by now
            self.device = torch.device("cuda", torch.cuda.current_device())
        saved = (self.resume or {}).get(rank)
        workers = max(self.num_workers, 1)
        pin = self.device.type == "cuda"
        buffers = PinnedBuffers(staging_count(self.num_workers), pin=pin) if self.stage else None
        to_device = ToDevice(self.device, buffers)
        pool = VolumePool(
            iter(()),
            self.stream.region_size,
            self.stream.regions_per_volume,
            self.budget,
            self.max_volumes,
            self.stream.foreground_prob,
            np.random.default_rng([self.stream.seed, rank, 2]),
        )
        signature = stream_signature(self.stream.sources, self.stream.resampled)
        feed = VolumeFeed(self.stream, self.num_workers, buffers, saved and replay_starts(saved))
        try:  # the workers stop however this ends: a replay that fails included
            last: dict[int, tuple[int, dict | None]] = {}  # worker → (its volumes taken - 1, the last one's position)
            states: dict[int, WorkerState] = {}
            held, taken = (
                (None, 0) if saved is None else (self._replay(saved, feed, pool, to_device, last), saved["taken"])
            )

            def taking() -> Iterator[Volume]:
                for n, (worker, volume, state) in enumerate(feed.in_turn(first=taken % workers), start=taken):
                    states[worker], last[worker] = state, (n // workers, volume.position)
                    volume.ordinal, volume.array = n, to_device(volume)
                    yield volume

            pool.volumes = taking()
            for group in pool.groups(self.batch_size, held=held):
                self.figures.regions += len(group)
                self.figures.sent_bytes, self.figures.held_bytes = to_device.sent, pool.held_bytes
                batch = self._batch(group, states)
                batch["_feed_state"] = feed_state(self.stream.seed, workers, signature, pool, last)
                yield batch
        finally:
            feed.close()

    def _replay(self, saved: dict, feed: VolumeFeed, pool: VolumePool, to_device, last: dict) -> list[Volume]:
        """Re-reads the volumes the saved pool held (each worker's stream restarted at its oldest one) and sets the
        pool's generator as it was: the pool goes on as if never stopped."""
        workers = saved["workers"]
        keep = {ordinal: (uses, key) for ordinal, uses, _, key in saved["held"]}
        found: dict[int, Volume] = {}
        for worker, (first, final) in replay_plan(saved).items():
            for index in range(first, final + 1):
                item = feed.take(worker)
                if item is None:
                    raise RuntimeError(f"data worker {worker}'s stream ended while replaying the saved device pool")
                volume, _ = item
                last[worker] = (index, volume.position)
                ordinal = index * workers + worker
                if ordinal in keep:
                    uses, key = keep[ordinal]
                    if volume.key != key:
                        raise UnreadableShards(
                            f"resuming the device pool: data worker {worker} read {volume.key} where the checkpoint's "
                            f"pool held {key}: the shard set changed since; resume with its shards as they were"
                        )
                    volume.ordinal, volume.uses_left, volume.array = ordinal, uses, to_device(volume)
                    found[ordinal] = volume
                else:  # spent before the save: read again only to reach the next one
                    to_device._give(volume.staging)
        pool.rng.bit_generator.state = saved["rng"]
        return [found[ordinal] for ordinal, *_ in saved["held"]]

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
