"""Where training samples come from: one or several shard sets, mixed by weight, resampled or in exact passes.

- `data.shards`: one shard set (a folder with index.json, a brace pattern, an `http(s)://` URL or a
  `pipe:` command such as `pipe:aws s3 cp s3://bucket/shard-000001.tar -`).
- `data.sources=[{shards: ..., weight: 0.7, name: ct}, ...]`: several, drawn in proportion to `weight`.
- `data.resampled=true` (default): each worker draws shards at random with replacement, forever.
  `false`: passes over the data; in each pass every sample is read by exactly one (rank, worker) slot —
  whole shards per slot when there are at least as many shards as slots, else every slot reads
  every shard and keeps every n-th sample.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxfm.data.stream.shards import shard_set


@dataclass(frozen=True)
class Source:
    name: str
    urls: list[str]
    weight: float
    n_samples: int | None = None  # as its index.json lists them; None without one (a brace pattern, pipe:)


def _name(shards: str) -> str:
    return Path(str(shards).split("::")[0].rstrip("/")).name.split("{")[0].rstrip("-_.") or "shards"


def parse_sources(shards: str | None, sources: list[dict] | None) -> list[Source]:
    """`data.shards` or `data.sources` (exactly one) → sources with their URLs and normalised weights."""
    if bool(shards) == bool(sources):
        raise ValueError("set exactly one of data.shards=<shard set> or data.sources=[{shards: ..., weight: ...}, ...]")
    if shards:
        urls, n_samples = shard_set(shards)
        return [Source(_name(shards), urls, 1.0, n_samples)]
    parsed = []
    for i, src in enumerate(sources):
        unknown = set(src) - {"shards", "weight", "name"}
        if unknown or "shards" not in src:
            raise ValueError(f"data.sources[{i}]={dict(src)}: expected keys shards (required), weight, name")
        weight = float(src.get("weight", 1.0))
        if not weight > 0:
            raise ValueError(f"data.sources[{i}].weight={weight}: expected > 0")
        urls, n_samples = shard_set(src["shards"])
        parsed.append(Source(str(src.get("name") or _name(src["shards"])), urls, weight, n_samples))
    names = [s.name for s in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"data.sources: names {names} repeat; give each source its own `name`")
    total = sum(s.weight for s in parsed)
    return [Source(s.name, s.urls, s.weight / total, s.n_samples) for s in parsed]


def _wds():
    """webdataset, imported where samples are read: it imports torch, which the config check must not wait for."""
    import webdataset

    return webdataset


def _opening(on_shard: Callable[[str], None] | None) -> Callable:
    """A pipeline stage that calls `on_shard(url)` as each shard is opened: an empty shard brings no sample and no
    error, so only this tells a set of empty shards from a slow one."""

    def stage(shards: Iterator[dict]) -> Iterator[dict]:
        for shard in shards:
            if on_shard is not None:
                on_shard(shard["url"])
            yield shard

    return stage


def resampled_samples(
    urls: list[str], seed: int, worker_seed: int, handler: Callable, on_shard: Callable[[str], None] | None = None
) -> Iterator[dict]:
    """Endless: shards drawn at random with replacement, samples in shard order."""
    wds = _wds()
    return iter(
        wds.DataPipeline(
            wds.ResampledShards(urls, seed=seed, worker_seed=lambda: worker_seed, deterministic=True),
            _opening(on_shard),
            wds.tarfile_to_samples(handler=handler),
        )
    )


def epoch_samples(
    urls: list[str],
    seed: int,
    slot: int,
    n_slots: int,
    handler: Callable,
    passes: int | None = None,
    on_shard: Callable[[str], None] | None = None,
) -> Iterator[dict]:
    """Passes (endless by default); pass p reads the shards in an order every slot agrees on (seed, p), and
    this slot gets exactly its share of the pass's samples."""
    wds = _wds()
    for p in itertools.count() if passes is None else range(passes):
        order = [urls[i] for i in np.random.default_rng([seed, p]).permutation(len(urls))]
        if len(order) >= n_slots:
            yield from wds.DataPipeline(
                wds.SimpleShardList(order[slot::n_slots]), _opening(on_shard), wds.tarfile_to_samples(handler=handler)
            )
        else:
            samples = wds.DataPipeline(
                wds.SimpleShardList(order), _opening(on_shard), wds.tarfile_to_samples(handler=handler)
            )
            yield from itertools.islice(samples, slot, None, n_slots)


def mix(streams: list[Iterator], weights: list[float], rng: np.random.Generator) -> Iterator[tuple[int, dict]]:
    """(source index, sample), each draw from source i with probability weights[i]."""
    if len(streams) == 1:
        for sample in streams[0]:
            yield 0, sample
        return
    while True:
        i = int(rng.choice(len(streams), p=weights))
        yield i, next(streams[i])
