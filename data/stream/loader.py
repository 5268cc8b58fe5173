"""Batches of regions from worker *threads* instead of processes.

A DataLoader worker process hands each batch to the training process through shared memory: one more
copy of every voxel, which on the development VM cost more than decoding and cutting together
(`voxfm bench data`: ~750 regions/s through a worker process vs ~1,700+ in-process). The heavy steps —
tar reads, blosc2 decoding, the batch copy in `torch.stack` — release the GIL, so threads share one
address space and skip that copy. Each thread runs its own seeded stream (`RegionStream.worker_stream`).
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Iterator

import torch

from voxfm.data.stream.batches import collate_regions
from voxfm.data.stream.device_feed import DeviceFeed, PinnedBuffers, buffer_count, collate_into
from voxfm.data.stream.regions import QUEUED_PER_WORKER, RegionStream, check_group
from voxfm.data.stream.skips import UnreadableShards

_RUNNING: dict[int, tuple[threading.Event, list[threading.Thread]]] = {}


@atexit.register
def _stop_all() -> None:
    """A daemon thread still inside a torch op when the interpreter exits aborts the process; stop them first."""
    for stop, threads in list(_RUNNING.values()):
        stop.set()
        for t in threads:
            t.join(timeout=10)


class ThreadLoader:
    """Iterable of collated batches from `num_threads` threads (0: in the caller's thread)."""

    def __init__(
        self,
        stream: RegionStream,
        batch_size: int,
        num_threads: int,
        prefetch: int = QUEUED_PER_WORKER,
        pin_memory: bool | None = None,
    ):
        if batch_size < 1 or num_threads < 0:
            raise ValueError(f"data.batch_size={batch_size}, data.num_workers={num_threads}: expected >= 1 and >= 0")
        check_group(stream, batch_size)
        self.stream, self.batch_size, self.num_threads, self.prefetch = stream, batch_size, num_threads, prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory

    def _batches(
        self, worker: int, buffers: PinnedBuffers | None, stop: threading.Event | None = None
    ) -> Iterator[dict]:
        regions = self.stream.worker_stream(worker, max(self.num_threads, 1))
        while True:
            samples = [next(regions) for _ in range(self.batch_size)]
            if buffers is None:
                yield collate_regions(samples)
                continue
            batch = collate_into(samples, buffers, stop)  # one copy, into a pinned buffer (data/stream/device_feed.py)
            samples = None  # the regions are views: let spent volumes go before the next batch is cut
            if batch is None:
                return
            yield batch

    def __iter__(self) -> Iterator[dict]:
        """Host batches; with `pin_memory` (CUDA), device batches through `DeviceFeed` (copied one batch ahead)."""
        if not self.pin_memory:
            yield from self._host_batches(None)
            return
        buffers = PinnedBuffers(buffer_count(self.num_threads, self.prefetch))
        yield from DeviceFeed(self._host_batches(buffers), buffers, torch.device("cuda", torch.cuda.current_device()))

    def _host_batches(self, buffers: PinnedBuffers | None) -> Iterator[dict]:
        if self.num_threads == 0:
            yield from self._batches(0, buffers)
            return
        out: queue.Queue = queue.Queue(maxsize=self.prefetch * self.num_threads)
        stop = threading.Event()

        def offer(item) -> bool:
            """Queue `item`, waiting while the queue is full; False once the loader is stopped."""
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work(worker: int) -> None:
            try:
                for batch in self._batches(worker, buffers, stop):
                    if not offer(batch):
                        return
            except BaseException as err:  # surfaced in the training thread, not lost in a worker
                offer(err)

        threads = [
            threading.Thread(target=work, args=(i,), daemon=True, name=f"voxfm-data-{i}")
            for i in range(self.num_threads)
        ]
        for t in threads:
            t.start()
        _RUNNING[id(stop)] = (stop, threads)
        try:
            while True:
                item = out.get()
                if isinstance(item, UnreadableShards):  # says all there is (the shards); the thread adds nothing
                    raise item
                if isinstance(item, BaseException):
                    raise RuntimeError(f"a data-loader thread failed: {type(item).__name__}: {item}") from item
                yield item
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
            _RUNNING.pop(id(stop), None)
