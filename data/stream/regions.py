"""The region stream: shards into training regions with webdataset, and its data loader.

Each data-loader worker on each rank draws shards at random with replacement (`resampled_samples`)
from a seed that mixes (seed, rank, worker), so the stream is infinite, differs per rank and
worker, and needs no shared filesystem listing beyond the shard URLs; or, with `resampled=False`,
reads exact passes split by (rank, worker). Several shard sets mix by weight (`data/stream/sources.py`).
A truncated shard or a damaged sample is skipped with a warning and counted (`data/stream/skips.py`); only a set
with nothing usable stops the run. Workers decode whole volumes (blosc2) and cut **regions** in the stored dtype
(int16 for CT), each with its volume's normalisation record (`data/stream/samples.py`): `data.regions_per_volume`
from each volume read, spread over many batches by a pool of decoded volumes (`data/stream/pool.py`,
`data.pool_gib`), and collate them into batches (`data/stream/batches.py`). Views, normalisation and augmentation
happen later, batched on the training device (`data/views/pipeline.py`): a CPU core only decodes and copies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from voxfm.data.ingest import payload
from voxfm.data.stream.batches import collate_regions
from voxfm.data.stream.crops import random_crop, triple
from voxfm.data.stream.pool import FeedCounters, Volume, VolumePool, sample_bytes
from voxfm.data.stream.samples import load_volume, region_record
from voxfm.data.stream.skips import SkipCounter
from voxfm.data.stream.sources import epoch_samples, mix, parse_sources, resampled_samples

log = logging.getLogger("voxfm.data")
QUEUED_PER_WORKER = 4  # batches a loader keeps ready per worker


class RegionStream(IterableDataset):
    """Infinite stream of regions, each volume read serving `regions_per_volume` of them: from a pool of decoded
    volumes (`data/stream/pool.py`) in groups of `group` regions from distinct volumes when `pool_gib` > 0 (the rank's
    budget, shared by its workers), else cut all at once from each volume and mixed by a shuffle buffer."""

    def __init__(
        self,
        shards: str | None,
        region_size,
        regions_per_volume: int = 4,
        foreground_prob: float = 0.67,
        shuffle_buffer: int = 64,
        seed: int = 0,
        sources: list[dict] | None = None,
        resampled: bool = True,
        max_sample_mb: float = payload.MAX_SAMPLE_MB,
        pool_gib: float = 0.0,
        pool_volumes: int = 48,
        group: int = 32,
        device_pool_volumes: int | None = None,
    ):
        if regions_per_volume < 1:
            raise ValueError(f"data.regions_per_volume={regions_per_volume}: expected >= 1")
        if not max_sample_mb > 0:
            raise ValueError(f"data.max_sample_mb={max_sample_mb}: expected > 0")
        if not 0.0 <= foreground_prob <= 1.0:
            raise ValueError(f"data.foreground_prob={foreground_prob}: expected a probability in [0, 1]")
        if pool_gib < 0 or pool_volumes < 1 or group < 1:
            raise ValueError(
                f"data.pool_gib={pool_gib}, data.pool_volumes={pool_volumes}, group={group}: expected >= 0, >= 1, >= 1"
            )
        self.max_sample_mb = max_sample_mb
        self.sources = parse_sources(shards, sources)
        self.urls = [u for s in self.sources for u in s.urls]
        self.region_size = triple(region_size)
        self.regions_per_volume, self.foreground_prob = regions_per_volume, foreground_prob
        self.shuffle_buffer, self.seed, self.resampled = shuffle_buffer, seed, resampled
        self.pool_gib, self.pool_volumes, self.group = pool_gib, pool_volumes, group
        self.device_pool_volumes = device_pool_volumes  # set: volumes go to a device pool, not the host's
        counts = [s.n_samples for s in self.sources]
        self.distinct = None if None in counts else sum(counts)  # distinct volumes, where the index says
        self._fit_pool_to_the_set()
        if pool_gib == 0 and device_pool_volumes is None and shuffle_buffer < 4 * regions_per_volume:
            log.warning(
                "voxfm: without a volume pool (data.pool_gib=0) each volume's %d regions are mixed by a "
                "shuffle buffer of only %d: a batch draws from few volumes; lower data.regions_per_volume or "
                "raise data.shuffle_buffer (or turn the pool on)",
                regions_per_volume,
                shuffle_buffer,
            )

    def _fit_pool_to_the_set(self) -> None:
        """A set of fewer volumes than a pool (or a batch) repeats volumes in every batch: said once, here. The pool
        then holds at most that many, not copies of them read again (a one-volume set filled it with 48)."""
        if self.device_pool_volumes is not None:
            size, what, held = self.device_pool_volumes, "data.device_pool_volumes", "the device pool"
        elif self.pool_gib > 0:
            size, what, held = self.pool_volumes, "data.pool_volumes", "each data worker's pool"
        else:
            size, what, held = self.group, "a batch", ""
        if self.distinct is None or self.distinct >= size:
            return
        log.warning(
            "voxfm: the shard set has %d distinct volume(s), fewer than %s (%d): batches will repeat volumes (each "
            "draws from at most %d)%s",
            self.distinct,
            what,
            size,
            self.distinct,
            f"; {held} holds at most {self.distinct}" if held else "",
        )
        self.pool_volumes = min(self.pool_volumes, self.distinct)
        if self.device_pool_volumes is not None:
            self.device_pool_volumes = min(self.device_pool_volumes, self.distinct)

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _volumes(
        self, samples: Iterator[tuple[int, dict]], skips: SkipCounter, counters: FeedCounters
    ) -> Iterator[Volume]:
        """Loaded volumes; a damaged payload or metadata skips the sample, never the run. Every sample's bytes count
        as read."""
        for source, sample in samples:
            counters.read_bytes += sample_bytes(sample)
            counters.reads += 1
            try:
                volume = load_volume(sample, self.region_size, self.max_sample_mb, source)
            except Exception as err:
                skips.skip(
                    RuntimeError(
                        f"sample {sample.get('__key__')} of {sample.get('__url__')}: {type(err).__name__}: {err}"
                    )
                )
                continue
            skips.ok()
            volume.position = sample.get("__position__")
            yield volume

    def _records(
        self, pairs: Iterator[tuple[np.ndarray, Volume]], skips: SkipCounter, counters: FeedCounters, worker: int
    ) -> Iterator[dict]:
        for region, volume in pairs:
            counters.regions += 1
            yield {
                **region_record(region, volume),
                "worker": worker,
                "skipped": skips.count,
                "read_bytes": counters.read_bytes,
                "reads": counters.reads,
            }

    def samples(
        self, worker: int, n_workers: int = 1, skips: SkipCounter | None = None, start: dict | None = None
    ) -> Iterator[tuple[int, dict]]:
        """(source index, raw sample) for data worker `worker` of `n_workers` on this rank; each sample carries its
        `__position__` in the mixed stream (data/stream/sources.py), and `start=` one restarts the stream there."""
        rank, world = self._rank_world()
        skips = skips or SkipCounter()
        slot, n_slots = rank * n_workers + worker, world * n_workers
        worker_seed = (self.seed * 1_000_003 + rank) * 1_009 + worker
        starts = start["sources"] if start else [None] * len(self.sources)
        streams = [
            resampled_samples(
                s.urls, self.seed, worker_seed + 7919 * i, skips.skip, on_shard=skips.opened, start=starts[i]
            )
            if self.resampled
            else epoch_samples(
                s.urls, self.seed + 7919 * i, slot, n_slots, skips.skip, on_shard=skips.opened, start=starts[i]
            )
            for i, s in enumerate(self.sources)
        ]
        rng = np.random.default_rng([self.seed, rank, worker, 1])
        return _arriving(mix(streams, [s.weight for s in self.sources], rng, start=start), skips)

    def volumes(
        self,
        worker: int,
        n_workers: int = 1,
        counters: FeedCounters | None = None,
        skips: SkipCounter | None = None,
        start: dict | None = None,
    ) -> Iterator[Volume]:
        """The decoded volumes of data worker `worker` on this rank, damaged samples skipped and counted in `skips`,
        each with its sample's `position` (`start=` one restarts there): what the device pool
        (`data/stream/device_pool.py`) takes; `counters` (optional) is updated as it goes."""
        skips = skips if skips is not None else SkipCounter()
        return self._volumes(self.samples(worker, n_workers, skips, start), skips, counters or FeedCounters())

    def worker_stream(self, worker: int, n_workers: int = 1, counters: FeedCounters | None = None) -> Iterator[dict]:
        """The infinite region stream of data worker `worker` (a loader process or thread) on this rank; `counters`
        (optional) is updated as it goes."""
        rank, _ = self._rank_world()
        key = [self.seed, rank, worker]
        rng, skips, counters = np.random.default_rng(key), SkipCounter(), counters or FeedCounters()
        volumes = self.volumes(worker, n_workers, counters, skips)
        if self.pool_gib > 0:
            pool = VolumePool(
                volumes,
                self.region_size,
                self.regions_per_volume,
                self.pool_gib * 2**30 / n_workers,
                self.pool_volumes,
                self.foreground_prob,
                rng,
                partial(self._pool_filled, worker),
            )
            return self._records((pair for group in pool.groups(self.group) for pair in group), skips, counters, worker)
        pairs = (
            (random_crop(v.array, v.points, self.region_size, self.foreground_prob, rng), v)
            for v in volumes
            for _ in range(self.regions_per_volume)
        )
        shuffle = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, seed=str(key))
        return iter(shuffle(self._records(pairs, skips, counters, worker)))

    def _pool_filled(self, worker: int, n: int, held_bytes: int) -> None:
        log.info("voxfm: data worker %d holds %d decoded volumes (%.2f GiB)", worker, n, held_bytes / 2**30)
        whole_set = self.distinct is not None and n >= self.distinct  # its size was warned about at the start
        if n < self.group and not whole_set:
            log.warning(
                "voxfm: data worker %d's pool holds %d volumes, fewer than a batch (%d): a batch draws from "
                "at most %d distinct volumes; raise data.pool_gib (or data.pool_volumes)",
                worker,
                n,
                self.group,
                n,
            )

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        return self.worker_stream(info.id if info else 0, info.num_workers if info else 1)


def _arriving(samples: Iterator[tuple[int, dict]], skips: SkipCounter) -> Iterator[tuple[int, dict]]:
    """`samples`, telling `skips` each one arrived (after the exact passes' share of this worker: what it gets)."""
    for pair in samples:
        skips.arrived()
        yield pair


def check_group(stream: RegionStream, batch_size: int) -> None:
    """A loader's batch must be the pool's group: a batch straddling two groups loses its distinct volumes."""
    if stream.pool_gib > 0 and stream.group != batch_size:
        raise ValueError(
            f"the volume pool cuts groups of {stream.group} regions but the loader's batch is "
            f"{batch_size}: build the stream with group=batch_size"
        )


def region_loader(stream: RegionStream, batch_size: int, num_workers: int) -> DataLoader:
    check_group(stream, batch_size)
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_regions,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        prefetch_factor=QUEUED_PER_WORKER if num_workers > 0 else None,
    )
