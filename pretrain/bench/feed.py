"""Measuring a fit's feed for `voxfm bench loop`: the counters a feed keeps (batches, host time, shard bytes and
volumes read per worker), the timed window of steps after warm-up, and the process's peak host memory."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import lightning as L
import torch

from voxfm.pretrain.bench.model import significant


@dataclass
class FeedMark:
    """A feed's counters at one moment. reads: per data worker, the latest (shard bytes, volumes) read so far that
    its batches reported."""

    waited: float
    regions: int
    reads: dict[int, tuple[int, int]]


class TimedFeed:
    """The batches of `batches`, counted on their way to the loop: host seconds spent waiting in `next`, regions
    delivered, and each data worker's cumulative shard reads (`read_bytes`, `reads`; host values, so counting them
    reads no tensor). Keeps the first batch."""

    def __init__(self, batches: Iterable[dict]):
        self.batches, self.first, self._running = batches, None, None
        self.waited, self.regions = 0.0, 0
        self.first_reads: dict[int, tuple[int, int]] = {}  # per worker, its first report
        self.reads: dict[int, tuple[int, int]] = {}  # per worker, its latest report

    def __iter__(self) -> Iterator[dict]:
        self._running = self._timed(iter(self.batches))
        return self._running

    def _timed(self, batches: Iterator[dict]) -> Iterator[dict]:
        try:
            while True:
                start = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                self.waited += time.perf_counter() - start
                self._count(batch)
                yield batch
        finally:
            getattr(batches, "close", lambda: None)()  # a ThreadLoader's batches stop its threads when closed

    def _count(self, batch: dict) -> None:
        if self.first is None:
            self.first = dict(batch)
        self.regions += batch["region"].shape[0]
        if "read_bytes" in batch:
            report = (batch["read_bytes"], batch.get("reads", 0))
            self.first_reads.setdefault(batch.get("worker", 0), report)
            self.reads[batch.get("worker", 0)] = report

    def mark(self) -> FeedMark:
        return FeedMark(self.waited, self.regions, dict(self.reads))

    def close(self) -> None:
        """Stops the loader behind it (its threads or processes) now rather than when collected."""
        if self._running is not None:
            self._running.close()


def feed_figures(
    start: FeedMark, end: FeedMark, first_reads: dict[int, tuple[int, int]], host_s: float, seconds: float
) -> dict:
    """The feed between two marks: the share of host time spent waiting for the next batch, shard GB/s (all of
    this process's workers: one GPU's) and regions delivered per volume read; a worker first heard from between the
    marks counts from its first report. Without reports (a loader that does not count reads): None."""
    figures = {
        "data_wait": round((end.waited - start.waited) / host_s, 3),
        "shard_gb_per_s": None,
        "regions_per_read": None,
    }
    if end.reads:
        base = {w: start.reads.get(w, first_reads[w]) for w in end.reads}
        read_bytes = sum(end.reads[w][0] - base[w][0] for w in end.reads)
        reads = sum(end.reads[w][1] - base[w][1] for w in end.reads)
        figures["shard_gb_per_s"] = significant(read_bytes / 1e9 / seconds)
        figures["regions_per_read"] = round((end.regions - start.regions) / reads, 1) if reads else None
    return figures


class StepWindow(L.Callback):
    """Marks the end of batch `warmup` and of batch `warmup + steps` (a CUDA event on CUDA, the host clock, the
    feed's counters), then stops the fit. Added last, so every other callback's work at a batch's end is inside."""

    def __init__(self, feed: TimedFeed, warmup: int, steps: int):
        self.feed, self.ends, self.batches, self.marks = feed, (warmup, warmup + steps), 0, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1
        if self.batches in self.ends:
            event = torch.cuda.Event(enable_timing=True) if pl_module.device.type == "cuda" else None
            if event is not None:
                event.record()
            self.marks.append((event, time.perf_counter(), self.feed.mark()))
        if self.batches == self.ends[1]:
            trainer.should_stop = True

    def figures(self, views: int) -> dict:
        """samples/s and step ms of the timed steps (device time), and the feed's figures over them."""
        if len(self.marks) < 2:
            raise RuntimeError(f"the fit ended after {self.batches} batches, before warmup + steps = {self.ends[1]}")
        (first, host0, mark0), (last, host1, mark1) = self.marks
        host = host1 - host0
        if first is not None:
            last.synchronize()
        seconds = host if first is None else first.elapsed_time(last) / 1e3
        steps = self.ends[1] - self.ends[0]
        return {
            "samples_per_s": significant(views * steps / seconds),
            "step_ms": significant(seconds / steps * 1e3),
            **feed_figures(mark0, mark1, self.feed.first_reads, host, seconds),
        }


def reset_peak_rss() -> bool:
    """Restarts the kernel's record of this process's peak resident set (Linux, /proc/self/clear_refs); False where
    that is not allowed, and peaks then run from the process's start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """This process's peak resident set since the last reset (VmHWM; `getrusage` where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20, 2)
    except (OSError, StopIteration):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB on Linux
