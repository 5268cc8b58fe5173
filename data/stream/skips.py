"""What a data worker does with data it cannot use: a damaged shard or sample is skipped with a warning and
counted; only a shard set with nothing usable stops the run, with `UnreadableShards`.

Nothing usable is 1,000 damaged shards/samples in a row, or 1,000 shard reads in a row that bring this worker no
sample at all: webdataset reads an empty shard without an error, so a set of empty shards (or, in exact passes,
fewer samples than ranks × workers) would otherwise be read forever, at full CPU, before the first batch.
"""

from __future__ import annotations

import logging

log = logging.getLogger("voxfm.data")
MAX_SKIPPED_IN_A_ROW = 1000  # nothing but damaged data (or no sample) this long: the shard set itself is unusable


class UnreadableShards(RuntimeError):
    """The shard set gives a data worker nothing to train on: only damaged data, or no sample at all. Raised in the
    worker; the thread loader passes it on as it is (its message names the shards)."""


class SkipCounter:
    """A worker's damaged shards/samples (`skip`, webdataset's handler), shards opened (`opened`) and samples that
    arrived (`arrived`); gives up only when nothing usable comes at all (see the module docstring)."""

    def __init__(self):
        self.count, self.in_a_row = 0, 0
        self.empty: dict[str, None] = {}  # shards opened since the last sample arrived, each once, in order
        self.empty_reads = 0

    def skip(self, err: BaseException) -> bool:
        self.count += 1
        self.in_a_row += 1
        log.warning(
            "voxfm: skipped damaged data (%d so far in this worker): %s: %s", self.count, type(err).__name__, err
        )
        if self.in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise UnreadableShards(
                f"{self.in_a_row} damaged shards/samples in a row and nothing readable: check the "
                f"shard set (last error: {type(err).__name__}: {err})"
            ) from err
        return True  # webdataset: continue with the next sample

    def opened(self, url: str) -> None:
        self.empty_reads += 1
        self.empty[url] = None
        if self.empty_reads >= MAX_SKIPPED_IN_A_ROW:
            urls = list(self.empty)
            named = ", ".join(urls[:3]) + (f" and {len(urls) - 3} more" if len(urls) > 3 else "")
            raise UnreadableShards(
                f"{self.empty_reads} shard reads in a row brought this data worker no sample, from {len(urls)} "
                f"shard(s): {named}; they hold none (or, in exact passes, fewer than ranks × data.num_workers): "
                "check the shard set"
            )

    def arrived(self) -> None:
        if self.empty_reads:
            self.empty_reads = 0
            self.empty.clear()

    def ok(self) -> None:
        self.in_a_row = 0
