"""Streaming shards into training regions with webdataset.

Each data-loader worker on each rank draws shards at random with replacement (`ResampledShards`)
from a seed that mixes (seed, rank, worker), so the stream is infinite, differs per rank and
worker, and needs no shared filesystem listing beyond the shard URLs; or, with `resampled=False`,
reads exact passes split by (rank, worker). Several shard sets mix by weight (`data/stream/sources.py`).
A truncated shard or a damaged sample is skipped with a warning and counted, never fatal. Workers decode whole
volumes (blosc2) and cut **regions** in the stored dtype (int16 for CT), each with its volume's normalisation
record: `data.regions_per_volume` from each volume read, spread over many batches by a pool of decoded volumes
(`data/stream/pool.py`, `data.pool_gib`). Views, normalisation and augmentation happen later, batched on
the training device (`data/views/pipeline.py`): a CPU core only decodes and copies.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from voxfm.data.ingest import payload
from voxfm.data.ingest.preprocess import MODALITIES, normalise
from voxfm.data.stream.crops import padded, random_crop, triple
from voxfm.data.stream.pool import FeedCounters, Volume, VolumePool, sample_bytes
from voxfm.data.stream.sources import epoch_samples, mix, parse_sources, resampled_samples

log = logging.getLogger("voxfm.data")
MAX_SKIPPED_IN_A_ROW = 1000  # nothing but damaged data this long: the shard set itself is unusable
QUEUED_PER_WORKER = 4  # batches a loader keeps ready per worker
# torch cannot promote these when a batch mixes dtypes: widened losslessly per region
UNPROMOTABLE = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sample_meta(raw: bytes) -> dict:
    """A sample's JSON, with every field the stream and the training step use checked here, so a damaged sample
    is skipped and counted where it is read, never failing later in collation or a callback: a modality in
    `MODALITIES`, finite normalisation with low < high, a 3-D shape, foreground points as [x, y, z]."""
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError(f"metadata: expected a JSON object, got {type(meta).__name__}")
    if not isinstance(meta.get("modality"), str) or meta["modality"] not in MODALITIES:
        raise ValueError(f"metadata: modality={meta.get('modality')!r}; allowed: {', '.join(MODALITIES)}")
    norm = meta.get("normalisation")
    low, high = (norm.get("low"), norm.get("high")) if isinstance(norm, dict) else (None, None)
    if not (_number(low) and _number(high) and low < high):
        raise ValueError(f"metadata: normalisation low={low!r}, high={high!r}; expected finite numbers, low < high")
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) and n >= 1 for n in shape)):
        raise ValueError(f"metadata: shape={shape!r}; expected 3 positive integers")
    points = meta.get("foreground_points")
    if not (isinstance(points, list) and all(isinstance(p, list) and len(p) == 3 and all(
            isinstance(c, int) and not isinstance(c, bool) for c in p) for p in points)):
        raise ValueError("metadata: foreground_points must be a list of [x, y, z] integer voxel coordinates")
    return meta


def decode_volume(sample: dict, max_sample_mb: float = payload.MAX_SAMPLE_MB) -> tuple[np.ndarray, dict]:
    """Raw webdataset sample → (volume [X, Y, Z] in its stored dtype, checked metadata); the payload is checked
    against the metadata's shape and the byte budget before it is decoded."""
    meta = sample_meta(sample["json"])
    return payload.decode(sample["image.b2"], meta["shape"], max_sample_mb), meta


def decode_sample(sample: dict, max_sample_mb: float = payload.MAX_SAMPLE_MB) -> tuple[np.ndarray, dict]:
    """Raw webdataset sample → (normalised float32 volume [X, Y, Z] in [0, 1], metadata)."""
    vol, meta = decode_volume(sample, max_sample_mb)
    return normalise(vol, meta["normalisation"]), meta


def load_volume(sample: dict, region_size, max_sample_mb: float = payload.MAX_SAMPLE_MB, source: int = 0) -> Volume:
    """One raw webdataset sample → a decoded `Volume` to cut regions from: stored dtype in native byte order, padded
    to at least `region_size` with the volume's background level."""
    vol, meta = decode_volume(sample, max_sample_mb)
    norm = meta["normalisation"]
    if not vol.dtype.isnative:  # e.g. big-endian NIfTI sharded before the writer made it native: torch refuses it
        vol = vol.astype(vol.dtype.newbyteorder("="))
    vol, points = padded(vol, meta["foreground_points"], triple(region_size), norm["low"])
    return Volume(vol, points, float(norm["low"]), float(norm["high"]), meta["modality"], source,
                  f"{sample.get('__url__')}#{sample.get('__key__')}")


def region_record(region: np.ndarray, volume: Volume) -> dict:
    """A region (a view of its volume: the batch collation is its only copy) with what the step needs of its volume.
    Measured on the real scans, a copy per region doubled a worker's time (fresh pages for every 1.8 MB region)."""
    wide = UNPROMOTABLE.get(region.dtype)
    return {"region": torch.from_numpy(region if wide is None else region.astype(wide))[None], "low": volume.low,
            "high": volume.high, "modality": volume.modality, "source": volume.source, "volume": volume.key}


def cut_regions(sample: dict, region_size, n: int, foreground_prob: float, rng: np.random.Generator,
                max_sample_mb: float = payload.MAX_SAMPLE_MB) -> list[dict]:
    """One raw webdataset sample → `n` regions {"region": [1, X, Y, Z] stored dtype, "low", "high", "modality", ...}
    cut at once (the path without a volume pool, `data.pool_gib=0`)."""
    volume = load_volume(sample, region_size, max_sample_mb)
    return [region_record(random_crop(volume.array, volume.points, triple(region_size), foreground_prob, rng), volume)
            for _ in range(n)]


def collate_regions(samples: list[dict], stack: bool = True) -> dict:
    """Stack regions; a batch mixing dtypes (int16 CT with float32 MR) is promoted to the widest. A batch comes
    from one worker: it carries that worker's count of skipped damaged data, its shard bytes and samples read so
    far, each region's source and the number of distinct volumes, as Python values: bookkeeping that stays on the
    host, so counting it never reads a device tensor. `stack=False`: the rest without "region"
    (`data/device_feed.collate_into` writes that into a pinned buffer)."""
    batch = {
        "low": torch.tensor([s["low"] for s in samples], dtype=torch.float32),
        "high": torch.tensor([s["high"] for s in samples], dtype=torch.float32),
        "modality": [s["modality"] for s in samples],
        "source": [s.get("source", 0) for s in samples],  # [B] source indices
        "worker": samples[0].get("worker", 0),
        "skipped": max(s.get("skipped", 0) for s in samples),
        "volumes": len({s.get("volume", i) for i, s in enumerate(samples)}),  # distinct volumes in the batch
        "read_bytes": max(s.get("read_bytes", 0) for s in samples),  # the worker's shard bytes read so far
        "reads": max(s.get("reads", 0) for s in samples),  # ... and samples read
    }
    if stack:
        dtype = batch_dtype(samples)
        batch["region"] = stack_into(samples, torch.empty(batch_shape(samples), dtype=dtype))
    return batch


def batch_dtype(samples: list[dict]) -> torch.dtype:
    """The widest of the regions' dtypes (int16 CT beside float32 MR: float32)."""
    dtype = samples[0]["region"].dtype
    for s in samples[1:]:
        dtype = torch.promote_types(dtype, s["region"].dtype)
    return dtype


def batch_shape(samples: list[dict]) -> tuple[int, ...]:
    return (len(samples), *samples[0]["region"].shape)


def stack_into(samples: list[dict], out: torch.Tensor) -> torch.Tensor:
    """The regions (strided views of their volumes) copied into `out` [B, 1, X, Y, Z] by numpy: on one core 2.5x
    faster than torch's strided int16 copy (0.9 vs 2.3 ms per 96³ region, BENCHMARKS.md), and it never starts
    torch's intra-op threads in a data worker."""
    target = out.numpy()
    for i, s in enumerate(samples):
        np.copyto(target[i], s["region"].numpy(), casting="same_kind")
    return out


class SkipCounter:
    """Counts damaged shards/samples a worker skipped; gives up only when nothing readable comes at all."""

    def __init__(self):
        self.count, self.in_a_row = 0, 0

    def skip(self, err: BaseException) -> bool:
        self.count += 1
        self.in_a_row += 1
        log.warning("voxfm: skipped damaged data (%d so far in this worker): %s: %s", self.count,
                    type(err).__name__, err)
        if self.in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise RuntimeError(f"{self.in_a_row} damaged shards/samples in a row and nothing readable: check the "
                               f"shard set (last error: {type(err).__name__}: {err})") from err
        return True  # webdataset: continue with the next sample

    def ok(self) -> None:
        self.in_a_row = 0


class RegionStream(IterableDataset):
    """Infinite stream of regions, each volume read serving `regions_per_volume` of them: from a pool of decoded
    volumes (`data/stream/pool.py`) in groups of `group` regions from distinct volumes when `pool_gib` > 0 (the rank's
    budget, shared by its workers), else cut all at once from each volume and mixed by a shuffle buffer."""

    def __init__(self, shards: str | None, region_size, regions_per_volume: int = 4, foreground_prob: float = 0.67,
                 shuffle_buffer: int = 64, seed: int = 0, sources: list[dict] | None = None, resampled: bool = True,
                 max_sample_mb: float = payload.MAX_SAMPLE_MB, pool_gib: float = 0.0, pool_volumes: int = 48,
                 group: int = 32):
        if regions_per_volume < 1:
            raise ValueError(f"data.regions_per_volume={regions_per_volume}: expected >= 1")
        if not max_sample_mb > 0:
            raise ValueError(f"data.max_sample_mb={max_sample_mb}: expected > 0")
        if not 0.0 <= foreground_prob <= 1.0:
            raise ValueError(f"data.foreground_prob={foreground_prob}: expected a probability in [0, 1]")
        if pool_gib < 0 or pool_volumes < 1 or group < 1:
            raise ValueError(f"data.pool_gib={pool_gib}, data.pool_volumes={pool_volumes}, group={group}: expected "
                             ">= 0, >= 1, >= 1")
        self.max_sample_mb = max_sample_mb
        self.sources = parse_sources(shards, sources)
        self.urls = [u for s in self.sources for u in s.urls]
        self.region_size = triple(region_size)
        self.regions_per_volume, self.foreground_prob = regions_per_volume, foreground_prob
        self.shuffle_buffer, self.seed, self.resampled = shuffle_buffer, seed, resampled
        self.pool_gib, self.pool_volumes, self.group = pool_gib, pool_volumes, group
        if pool_gib == 0 and shuffle_buffer < 4 * regions_per_volume:
            log.warning("voxfm: without a volume pool (data.pool_gib=0) each volume's %d regions are mixed by a "
                        "shuffle buffer of only %d: a batch draws from few volumes; lower data.regions_per_volume or "
                        "raise data.shuffle_buffer (or turn the pool on)", regions_per_volume, shuffle_buffer)

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _volumes(self, samples: Iterator[tuple[int, dict]], skips: SkipCounter, counters: FeedCounters
                 ) -> Iterator[Volume]:
        """Loaded volumes; a damaged payload or metadata skips the sample, never the run. Every sample's bytes count
        as read."""
        for source, sample in samples:
            counters.read_bytes += sample_bytes(sample)
            counters.reads += 1
            try:
                volume = load_volume(sample, self.region_size, self.max_sample_mb, source)
            except Exception as err:
                skips.skip(RuntimeError(f"sample {sample.get('__key__')} of {sample.get('__url__')}: "
                                        f"{type(err).__name__}: {err}"))
                continue
            skips.ok()
            yield volume

    def _records(self, pairs: Iterator[tuple[np.ndarray, Volume]], skips: SkipCounter, counters: FeedCounters,
                 worker: int) -> Iterator[dict]:
        for region, volume in pairs:
            counters.regions += 1
            yield {**region_record(region, volume), "worker": worker, "skipped": skips.count,
                   "read_bytes": counters.read_bytes, "reads": counters.reads}

    def samples(self, worker: int, n_workers: int = 1, skips: SkipCounter | None = None
                ) -> Iterator[tuple[int, dict]]:
        """(source index, raw sample) for data worker `worker` of `n_workers` on this rank."""
        rank, world = self._rank_world()
        skips = skips or SkipCounter()
        slot, n_slots = rank * n_workers + worker, world * n_workers
        worker_seed = (self.seed * 1_000_003 + rank) * 1_009 + worker
        streams = [resampled_samples(s.urls, self.seed, worker_seed + 7919 * i, skips.skip) if self.resampled
                   else epoch_samples(s.urls, self.seed + 7919 * i, slot, n_slots, skips.skip)
                   for i, s in enumerate(self.sources)]
        return mix(streams, [s.weight for s in self.sources], np.random.default_rng([self.seed, rank, worker, 1]))

    def worker_stream(self, worker: int, n_workers: int = 1, counters: FeedCounters | None = None) -> Iterator[dict]:
        """The infinite region stream of data worker `worker` (a loader process or thread) on this rank; `counters`
        (optional) is updated as it goes."""
        rank, _ = self._rank_world()
        key = [self.seed, rank, worker]
        rng, skips, counters = np.random.default_rng(key), SkipCounter(), counters or FeedCounters()
        volumes = self._volumes(self.samples(worker, n_workers, skips), skips, counters)
        if self.pool_gib > 0:
            pool = VolumePool(volumes, self.region_size, self.regions_per_volume, self.pool_gib * 2**30 / n_workers,
                              self.pool_volumes, self.foreground_prob, rng, partial(self._pool_filled, worker))
            return self._records((pair for group in pool.groups(self.group) for pair in group), skips, counters,
                                 worker)
        pairs = ((random_crop(v.array, v.points, self.region_size, self.foreground_prob, rng), v)
                 for v in volumes for _ in range(self.regions_per_volume))
        shuffle = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, seed=str(key))
        return iter(shuffle(self._records(pairs, skips, counters, worker)))

    def _pool_filled(self, worker: int, n: int, held_bytes: int) -> None:
        log.info("voxfm: data worker %d holds %d decoded volumes (%.2f GiB)", worker, n, held_bytes / 2**30)
        if n < self.group:
            log.warning("voxfm: data worker %d's pool holds %d volumes, fewer than a batch (%d): a batch draws from "
                        "at most %d distinct volumes; raise data.pool_gib (or data.pool_volumes)", worker, n,
                        self.group, n)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        return self.worker_stream(info.id if info else 0, info.num_workers if info else 1)


def check_group(stream: RegionStream, batch_size: int) -> None:
    """A loader's batch must be the pool's group: a batch straddling two groups loses its distinct volumes."""
    if stream.pool_gib > 0 and stream.group != batch_size:
        raise ValueError(f"the volume pool cuts groups of {stream.group} regions but the loader's batch is "
                         f"{batch_size}: build the stream with group=batch_size")


def region_loader(stream: RegionStream, batch_size: int, num_workers: int) -> DataLoader:
    check_group(stream, batch_size)
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_regions,
                      pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
                      prefetch_factor=QUEUED_PER_WORKER if num_workers > 0 else None)
