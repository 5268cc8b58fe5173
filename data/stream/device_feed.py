"""One copy from decoded volume to device: regions written straight into reused pinned batch buffers, and the
host-to-device copy on a side CUDA stream one batch ahead, so the compute stream never waits for it.

Without this, a batch costs two host copies (`torch.stack` into a fresh tensor, then `pin_memory` into another)
and a copy on the compute stream the step waits behind. Here a worker takes a free pinned buffer, stacks its
regions into it (`collate_into`), and `DeviceFeed` — in the training thread — starts batch k+1's copy on its own
stream while step k runs; the step's stream waits for that copy on the device (an event, no host sync). A buffer
returns to the free list once its copy has completed, so host buffers never reach training code.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Iterable, Iterator

import torch

from voxfm.data.stream.batches import batch_dtype, batch_shape, collate_regions, stack_into


class PinnedBuffers:
    """A bounded free list of pinned byte buffers, shared by the loader's threads; a batch's region tensor is a
    typed view of the front of one. Buffers are made on first need with a power-of-two size (what torch's pinned
    allocator reserves anyway), at most `limit` (the queue + the workers filling + the one batch whose copy
    `DeviceFeed` holds + one spare: `buffer_count`), and reused after; any free buffer large enough serves, so a
    batch of float32 MR after int16 CT costs one larger buffer, not a second set. A worker waits when all are in
    use."""

    def __init__(self, limit: int, pin: bool = True):
        self.limit, self.pin = limit, pin
        self.free: list[torch.Tensor] = []
        self.made = 0
        self.cond = threading.Condition()

    def take(self, nbytes: int, stop: threading.Event | None = None) -> torch.Tensor | None:
        """A buffer of at least `nbytes`; None when `stop` is set while waiting."""
        with self.cond:
            while True:  # by position, never `list.remove`: that compares tensors element by element
                fits = [i for i, b in enumerate(self.free) if b.numel() >= nbytes]
                if fits:
                    return self.free.pop(min(fits, key=lambda i: self.free[i].numel()))
                if self.made < self.limit or self.free:
                    if self.made < self.limit:
                        self.made += 1  # the slot is reserved here, the (slow) pinned allocation made unlocked
                    else:  # every free buffer is too small: drop the smallest, make a larger one
                        self.free.pop(min(range(len(self.free)), key=lambda i: self.free[i].numel()))
                    break
                self.cond.wait(timeout=0.1)
                if stop is not None and stop.is_set():
                    return None
        return torch.empty(2 ** math.ceil(math.log2(max(nbytes, 1))), dtype=torch.uint8, pin_memory=self.pin)

    def give(self, buffer: torch.Tensor) -> None:
        with self.cond:
            self.free.append(buffer)
            self.cond.notify()


def buffer_count(n_workers: int, queued_per_worker: int) -> int:
    """Pinned buffers a thread loader needs never to wait on itself (see `PinnedBuffers`)."""
    return queued_per_worker * max(n_workers, 1) + n_workers + 2


def collate_into(samples: list[dict], buffers: PinnedBuffers, stop: threading.Event | None = None) -> dict | None:
    """`collate_regions`, with the regions stacked straight into a buffer from `buffers` (one copy, already pinned);
    the batch carries that buffer as "_buffer" for `DeviceFeed` to return. None when stopped while waiting."""
    dtype, shape = batch_dtype(samples), batch_shape(samples)
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    buffer = buffers.take(nbytes, stop)
    if buffer is None:
        return None
    region = stack_into(samples, buffer[:nbytes].view(dtype).view(shape))
    batch = collate_regions(samples, stack=False)
    if buffers.pin:  # [B] floats: through the caching host allocator, so a copy from them never waits on the host
        batch["low"], batch["high"] = batch["low"].pin_memory(), batch["high"].pin_memory()
    return {**batch, "region": region, "_buffer": buffer}


class DeviceFeed:
    """Batches from `batches` (host, pinned, from `collate_into`) as device batches: batch k+1's copy runs on a side
    stream while the caller computes on batch k. CUDA only."""

    def __init__(self, batches: Iterable[dict], buffers: PinnedBuffers, device: torch.device):
        self.batches, self.buffers, self.device = batches, buffers, device

    def _start(self, host: dict, stream: torch.cuda.Stream) -> tuple[dict, torch.cuda.Event, torch.Tensor | None]:
        with torch.cuda.stream(stream):
            moved = {
                k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in host.items()
                if k != "_buffer"
            }
            done = torch.cuda.Event()
            done.record(stream)
        return moved, done, host.get("_buffer")

    def _reclaim(self, copying: collections.deque) -> None:
        """Return the buffers whose copies finished; wait (on the host, for a copy, not a step) for all but the
        newest, so at most one buffer is held here and the workers always find one (see `PinnedBuffers.limit`)."""
        while copying and (len(copying) > 1 or copying[0][0].query()):
            done, buffer = copying.popleft()
            done.synchronize()
            if buffer is not None:
                self.buffers.give(buffer)

    def __iter__(self) -> Iterator[dict]:
        stream = torch.cuda.Stream(self.device)
        copying: collections.deque = collections.deque()  # (event, host buffer) whose copy may still run
        source = iter(self.batches)
        try:
            yield from self._ahead(source, stream, copying)
        finally:  # stops the loader's threads now, not when the generator is collected
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _ahead(self, source: Iterator[dict], stream: torch.cuda.Stream, copying: collections.deque) -> Iterator[dict]:
        ahead = self._start(next(source), stream)
        while ahead is not None:
            batch, done, buffer = ahead
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(done)  # on the device: the step's kernels start after the copy, the host goes on
            for v in batch.values():
                if isinstance(v, torch.Tensor):
                    v.record_stream(compute)  # made on the side stream, used and freed on the compute stream
            copying.append((done, buffer))
            self._reclaim(copying)
            try:
                ahead = self._start(next(source), stream)
            except StopIteration:
                ahead = None
            yield batch
