"""A pool of decoded volumes per data worker: one shard read serves many regions, spread over many batches.

At 9,000 regions/s per GPU, cutting 16 regions from each volume read means ~4.7 GB/s of shard reads per GPU for
a typical 1.5 mm body CT: more than storage gives every GPU of a large job. So a worker keeps a pool of decoded
volumes within its share of `data.pool_gib` (at most `data.pool_volumes`), and each volume serves
`data.regions_per_volume` regions (≥ 150 by default) before the next sample read replaces it.

Each group of `group` regions (a batch: the loaders take whole batches from one worker) comes from
min(group, volumes held) distinct volumes chosen at random, one region each, so a batch stays diverse however many
regions a volume serves. The first pool's volumes get staggered lifetimes (k/P of the full count for the k-th),
so afterwards volumes leave one at a time: reads spread evenly over the run instead of refilling the whole pool
at once (a stall of P decodes).

Everything random comes from the worker's generator and the sample order: the regions are a pure function of
(seed, rank, worker, resume step), as without the pool.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from voxfm.data.stream.crops import random_crop

log = logging.getLogger("voxfm.data")


@dataclass(eq=False)
class Volume:
    """A decoded volume ready to cut from: padded to at least the region size, foreground points in its voxels."""

    array: np.ndarray
    points: list
    low: float
    high: float
    modality: str
    source: int = 0
    key: str = ""  # where it was read from (shard URL and sample key): a batch's distinct volumes are distinct keys
    uses_left: int = 0
    position: dict | None = None  # its sample's place in its worker's stream: the stream restarts there
    ordinal: int = -1  # the device pool's count of volumes taken before it
    staging: object = None  # the device pool's staging buffer of its host copy, until the copy to the device is done


@dataclass
class FeedCounters:
    """What a worker read and cut so far: shard bytes, volumes read (damaged ones included), regions yielded."""

    read_bytes: int = 0
    reads: int = 0
    regions: int = 0


def sample_bytes(sample: dict) -> int:
    """Bytes of one webdataset sample as read from its shard (payload, metadata, anything else it carries)."""
    return sum(len(v) for v in sample.values() if isinstance(v, (bytes, bytearray)))


class VolumePool:
    """Regions in groups from a refreshed pool of decoded volumes (see the module docstring).

    `volumes` yields loaded `Volume`s (damaged samples already skipped and counted by the caller); `budget_bytes`
    bounds the decoded arrays held (the pool stops filling once it is reached, so it exceeds it by less than one
    volume); at least one volume is always held."""

    def __init__(
        self,
        volumes: Iterator[Volume],
        region_size: tuple[int, int, int],
        regions_per_volume: int,
        budget_bytes: float,
        max_volumes: int,
        foreground_prob: float,
        rng: np.random.Generator,
        on_full: Callable[[int, int], None] | None = None,
    ):
        if regions_per_volume < 1 or max_volumes < 1 or not budget_bytes > 0:
            raise ValueError(
                f"regions_per_volume={regions_per_volume}, max_volumes={max_volumes}, "
                f"budget_bytes={budget_bytes}: expected >= 1, >= 1, > 0"
            )
        self.volumes, self.region_size, self.per_volume = volumes, region_size, regions_per_volume
        self.budget, self.max_volumes, self.foreground_prob, self.rng = budget_bytes, max_volumes, foreground_prob, rng
        self.on_full = on_full
        self.held: list[Volume] = []
        self.ended = False

    @property
    def held_bytes(self) -> int:
        return sum(v.array.nbytes for v in self.held)

    def _fill(self) -> None:
        while not self.ended and len(self.held) < self.max_volumes and (not self.held or self.held_bytes < self.budget):
            try:
                volume = next(self.volumes)
            except StopIteration:
                self.ended = True
                return
            volume.uses_left = self.per_volume
            self.held.append(volume)

    def _first_fill(self) -> None:
        self._fill()
        n = len(self.held)
        for k, volume in enumerate(self.held):  # staggered: afterwards volumes leave, and are read, one at a time
            volume.uses_left = max(1, math.ceil(self.per_volume * (k + 1) / n))
        if self.on_full is not None:
            self.on_full(n, self.held_bytes)

    def _picks(self, n: int) -> list[int]:
        """`n` pool slots in random order: first one per distinct volume (two copies of one sample can be held when
        it is read again before its first copy leaves), then, for a group larger than that, any at random."""
        order = self.rng.permutation(len(self.held))
        picks, keys, rest = [], set(), []
        for i in order.tolist():
            if len(picks) < n and self.held[i].key not in keys:
                picks.append(i)
                keys.add(self.held[i].key)
            else:
                rest.append(i)
        extra = n - len(picks)
        return picks + rest[:extra] + self.rng.integers(len(self.held), size=max(extra - len(rest), 0)).tolist()

    def group(self, n: int) -> list[tuple[np.ndarray, Volume]]:
        """`n` (region, its volume) pairs from min(n, distinct volumes held) distinct volumes; [] once the samples
        ended and the pool is empty. Volumes the previous group spent are replaced first. A pool smaller than `n`
        (warned about at the start) draws the rest at random, so a volume may serve a few more regions than
        `regions_per_volume` then."""
        self.held = [v for v in self.held if v.uses_left > 0]  # spent by the last group, whose regions are now
        self._fill()  # copied into their batch: only then is the next volume read (memory: one spare per worker)
        if not self.held:
            return []
        out = []
        for i in self._picks(n):
            volume = self.held[i]
            out.append(
                (random_crop(volume.array, volume.points, self.region_size, self.foreground_prob, self.rng), volume)
            )
            volume.uses_left -= 1
        return out

    def groups(self, n: int, held: list[Volume] | None = None) -> Iterator[list[tuple[np.ndarray, Volume]]]:
        """Groups of `n` until the samples end and the pool is spent (never, for the endless training streams).
        `held`: the volumes (uses left set) a pool held when it was saved, in its order: that pool goes on."""
        if held is None:
            self._first_fill()
        else:
            self.held = held
        while group := self.group(n):
            yield group


def memory_line(
    pool_gib: float,
    pool_volumes: int,
    regions_per_volume: int,
    n_workers: int,
    batch_size: int,
    region_size,
    batches: int,
    pinned: bool,
    max_sample_mb: float,
) -> str:
    """What the loader of one rank may hold, printed at the start: the pool's budget plus the stated overhead (per
    worker, the volumes being read or just spent; the `batches` between the workers and the step: pinned buffers
    of a power-of-two size on CUDA, data/stream/device_feed.py)."""
    workers = max(n_workers, 1)
    batch_bytes = batch_size * math.prod(region_size) * 4  # float32 at most (int16 for CT)
    if pinned:
        batch_bytes = 2 ** math.ceil(math.log2(batch_bytes))
    queued = f"{batches} {'pinned ' if pinned else ''}batches of ≤ {batch_bytes / 2**30:.2f} GiB"
    if pool_gib <= 0:
        return (
            f"data: no volume pool (data.pool_gib=0): each volume read serves {regions_per_volume} regions at "
            f"once; {queued}"
        )
    return (
        f"data: volume pool ≤ {pool_gib:g} GiB per rank ({workers} worker(s) × ≤ {pool_volumes} decoded "
        f"volumes within {pool_gib / workers:.2f} GiB each), each volume read serves {regions_per_volume} regions; "
        f"overhead ≤ ~3 volumes per worker being read or spent (≤ {max_sample_mb:g} MB each) + {queued}"
    )


def device_pool_line(
    budget_bytes: float, max_volumes: int, regions_per_volume: int, n_workers: int, gpu: bool, staging: int
) -> str:
    """The device pool's line at the start (data/stream/device_pool.py): what it may hold, and what the host keeps:
    on a GPU `staging` reused pinned buffers (each a decoded volume's bytes rounded up to a power of two)."""
    if not gpu:
        return (
            f"data: device pool ≤ {budget_bytes / 2**30:.3g} GiB on the CPU (the training device; ≤ {max_volumes} "
            f"decoded volumes, each serving {regions_per_volume} regions); {max(n_workers, 1)} worker(s) decoding"
        )
    return (
        f"data: device pool ≤ {budget_bytes / 2**30:.3g} GiB on the GPU (≤ {max_volumes} decoded volumes, each "
        f"serving {regions_per_volume} regions cut on the device); the host stages volumes in ≤ {staging} reused "
        f"pinned buffers ({max(n_workers, 1)} worker(s); each a volume's bytes rounded up to a power of two)"
    )
