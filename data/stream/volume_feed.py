"""Decoded volumes from the data workers, for the device pool (`data/stream/device_pool.py`): each worker thread
reads and decodes its own seeded stream of samples (`RegionStream.volumes`) into a small queue of its own, and the
pool takes from the workers in turn (worker 0, 1, ..., 0, ...), never as the volumes happen to arrive: what the pool
holds is then a pure function of the workers' streams, whatever the threads' timing.

A worker's stream can start at a saved position (`starts`), and the pool can take from one worker alone (`take`):
that is how a resumed run re-reads the volumes its pool held.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from voxfm.data.stream.device_feed import PinnedBuffers
from voxfm.data.stream.loader import _RUNNING
from voxfm.data.stream.pool import FeedCounters, Volume
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


def staging_count(n_workers: int) -> int:
    """Staging buffers a feed needs never to wait on itself: per worker the volumes queued and the one being
    filled, the one the pool is taking, and the copies still running (`ToDevice.MAX_COPYING`)."""
    return max(n_workers, 1) * (QUEUED_VOLUMES + 1) + 1 + MAX_COPYING


MAX_COPYING = 2  # volume copies to the device in flight; the pool waits for the oldest beyond that


def host_tensor(
    array: np.ndarray, buffers: PinnedBuffers | None, stop: threading.Event | None = None
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """A decoded volume as (the tensor the device copy reads, its staging buffer): with `buffers`, copied once into a
    reused buffer of theirs (pinned on CUDA: the device copy reads page-locked memory; reused: no fresh pages and no
    pinned allocation per volume), which goes back once the copy is done; else the array itself. uint16 and uint32
    widen (torch cannot promote them in a batch). None when `stop` is set while waiting for a buffer."""
    wide = UNPROMOTABLE.get(array.dtype)
    if wide is not None:
        array = array.astype(wide)
    if buffers is None:
        return torch.from_numpy(np.ascontiguousarray(array)), None
    dtype = torch.from_numpy(array[:0, :0, :0]).dtype
    buffer = buffers.take(array.nbytes, stop)
    if buffer is None:
        return None
    host = buffer[: array.nbytes].view(dtype).view(array.shape)
    np.copyto(host.numpy(), array)
    return host, buffer


class VolumeFeed:
    """Decoded volumes (array: a host tensor, staged in one of `buffers` where given: see `host_tensor`) of
    `n_workers` worker threads (0: the caller's thread), each with its worker's `WorkerState`; worker w's stream
    starts at `starts[w]` where given."""

    def __init__(
        self,
        stream: RegionStream,
        n_workers: int,
        buffers: PinnedBuffers | None,
        starts: dict[int, dict] | None = None,
    ):
        self.stream, self.n_workers, self.buffers = stream, n_workers, buffers
        self.starts = starts or {}
        self.stop = threading.Event()
        self.queues: list[queue.Queue] = []
        self.threads: list[threading.Thread] = []
        self.inline: Iterator | None = self._worker(0) if n_workers == 0 else None
        if n_workers > 0:
            self._start_threads()

    def _worker(self, worker: int) -> Iterator[tuple[Volume, WorkerState]]:
        counters, skips = FeedCounters(), SkipCounter()
        n = max(self.n_workers, 1)
        for volume in self.stream.volumes(worker, n, counters, skips, start=self.starts.get(worker)):
            staged = host_tensor(volume.array, self.buffers, self.stop)
            if staged is None:  # stopped while waiting for a staging buffer
                return
            volume.array, volume.staging = staged
            yield volume, WorkerState(skips.count, counters.read_bytes, counters.reads)

    def _offer(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, worker: int) -> None:
        try:
            for item in self._worker(worker):
                if not self._offer(self.queues[worker], item):
                    return
            self._offer(self.queues[worker], _END)
        except BaseException as err:  # surfaced in the training thread, not lost in a worker
            self._offer(self.queues[worker], err)

    def _start_threads(self) -> None:
        self.queues = [queue.Queue(maxsize=QUEUED_VOLUMES) for _ in range(self.n_workers)]
        self.threads = [
            threading.Thread(target=self._work, args=(i,), daemon=True, name=f"voxfm-volumes-{i}")
            for i in range(self.n_workers)
        ]
        for t in self.threads:
            t.start()
        _RUNNING[id(self.stop)] = (self.stop, self.threads)

    def take(self, worker: int) -> tuple[Volume, WorkerState] | None:
        """The next volume of `worker`; None once its stream ended. A worker's error is raised here."""
        if self.inline is not None:
            return next(self.inline, None)
        item = self.queues[worker].get()
        if item is _END:
            self.queues[worker].put(_END)  # stays ended
            return None
        if isinstance(item, UnreadableShards):  # says all there is (the shards); the thread adds nothing
            raise item
        if isinstance(item, BaseException):
            raise RuntimeError(f"a data-loader thread failed: {type(item).__name__}: {item}") from item
        return item

    def in_turn(self, first: int = 0) -> Iterator[tuple[int, Volume, WorkerState]]:
        """(worker, volume, state) from each worker in turn, starting at worker `first`; ends when all have."""
        n = max(self.n_workers, 1)
        live, w = set(range(n)), first % n
        while live:
            if w in live:
                item = self.take(w)
                if item is None:
                    live.discard(w)
                else:
                    yield w, *item
            w = (w + 1) % n

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)
        _RUNNING.pop(id(self.stop), None)
