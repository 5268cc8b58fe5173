"""Where training samples come from: one or several shard sets, mixed by weight, resampled or in exact passes.

- `data.shards`: one shard set (a folder with index.json, a brace pattern, an `http(s)://` URL or a
  `pipe:` command such as `pipe:aws s3 cp s3://bucket/shard-000001.tar -`).
- `data.sources=[{shards: ..., weight: 0.7, name: ct}, ...]`: several, drawn in proportion to `weight`.
- `data.resampled=true` (default): each worker draws shards at random with replacement, forever.
  `false`: passes over the data; in each pass every sample is read by exactly one (rank, worker) slot —
  whole shards per slot when there are at least as many shards as slots, else every slot reads
  every shard and keeps every n-th sample.

Every sample carries `__position__`, a small JSON- and `torch.load(weights_only=True)`-safe dict (ints, strings,
lists, dicts): the stream started with `start=` that position yields that very sample first and then exactly what
the original stream yielded, having opened only the sample's own shard. A training run killed at step k rebuilds
each data worker's stream from the position of the next sample it would have used.
"""

from __future__ import annotations

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


def after(position: dict) -> dict:
    """The position of the sample read after the one at `position` (resampled or exact passes): restarting there
    re-opens that sample's shard, reads past it, and goes on exactly as the original stream did."""
    return {**position, "skip": position["skip"] + 1, **({"seen": position["seen"] + 1} if "seen" in position else {})}


def _check_start(start: dict | None, keys: set[str]) -> None:
    if start is not None and (not isinstance(start, dict) or not keys <= set(start)):
        raise ValueError(f"start={start!r}: expected a sample's __position__, a dict with keys {sorted(keys)}")


def _shard(
    url: str, handler: Callable, on_shard: Callable[[str], None] | None, skip: int
) -> Iterator[tuple[int, dict]]:
    """(samples of the shard read before it, sample) for one shard's samples after its first `skip`, which are read
    (a tar stream cannot seek) but neither decoded nor yielded. An error among those skipped was handed to `handler`
    when the original stream first read it, so it is not handed again."""
    wds = _wds()
    done = 0

    def once(err: BaseException) -> bool:
        return True if done < skip else handler(err)

    for sample in wds.DataPipeline(
        wds.SimpleShardList([url]), _opening(on_shard), wds.tarfile_to_samples(handler=once)
    ):
        if done >= skip:
            yield done, sample
        done += 1


def resampled_samples(
    urls: list[str],
    seed: int,
    worker_seed: int,
    handler: Callable,
    on_shard: Callable[[str], None] | None = None,
    *,
    start: dict | None = None,
) -> Iterator[dict]:
    """Endless: shards drawn at random with replacement, samples in shard order. Each sample's `__position__` is
    `{"rng": the draw's bit-generator state before its shard was drawn, "skip": samples of that shard before it}`;
    `start=` a sample's position restarts the stream at that very sample, opening only its shard.

    The draw is voxfm's own (not webdataset's `ResampledShards`) so that its state can be saved and restored."""
    _check_start(start, {"rng", "skip"})
    return _resampled(urls, np.random.default_rng([seed, worker_seed]), handler, on_shard, start)


def _resampled(urls, rng: np.random.Generator, handler, on_shard, start: dict | None) -> Iterator[dict]:
    skip = 0
    if start is not None:
        rng.bit_generator.state, skip = start["rng"], start["skip"]
    while True:
        state = rng.bit_generator.state
        for done, sample in _shard(urls[int(rng.integers(len(urls)))], handler, on_shard, skip):
            sample["__position__"] = {"rng": state, "skip": done}
            yield sample
        skip = 0


def _slot_share(urls: list[str], seed: int, p: int, slot: int, n_slots: int) -> tuple[list[str], int, int]:
    """(shards this slot reads in pass p, stride, phase): it keeps the pass's samples whose index in its reading is
    phase modulo stride. Every slot agrees on the pass's order (seed, p); whole shards per slot when there are at
    least as many shards as slots, else every slot reads every shard and keeps every n_slots-th sample."""
    order = [urls[i] for i in np.random.default_rng([seed, p]).permutation(len(urls))]
    return (order[slot::n_slots], 1, 0) if len(order) >= n_slots else (order, n_slots, slot)


def epoch_samples(
    urls: list[str],
    seed: int,
    slot: int,
    n_slots: int,
    handler: Callable,
    passes: int | None = None,
    on_shard: Callable[[str], None] | None = None,
    *,
    start: dict | None = None,
) -> Iterator[dict]:
    """Passes (endless by default); pass p reads the shards in an order every slot agrees on (seed, p), and
    this slot gets exactly its share of the pass's samples. Each sample's `__position__` is `{"pass": p, "shard":
    index in this slot's shards of the pass, "skip": samples of that shard read before it, "seen": samples of the
    pass this slot read before it}`; `start=` a sample's position restarts the stream at that very sample."""
    _check_start(start, {"pass", "shard", "skip", "seen"})
    return _epochs(urls, seed, slot, n_slots, handler, passes, on_shard, start)


def _epochs(urls, seed, slot, n_slots, handler, passes, on_shard, start: dict | None) -> Iterator[dict]:
    at = start or {"pass": 0, "shard": 0, "skip": 0, "seen": 0}
    p, first, skip, seen = at["pass"], at["shard"], at["skip"], at["seen"]
    while passes is None or p < passes:
        shards, stride, phase = _slot_share(urls, seed, p, slot, n_slots)
        for j in range(first, len(shards)):
            for done, sample in _shard(shards[j], handler, on_shard, skip):
                if seen % stride == phase:
                    sample["__position__"] = {"pass": p, "shard": j, "skip": done, "seen": seen}
                    yield sample
                seen += 1
            skip = 0
        p, first, seen = p + 1, 0, 0


def mix(
    streams: list[Iterator[dict]], weights: list[float], rng: np.random.Generator, *, start: dict | None = None
) -> Iterator[tuple[int, dict]]:
    """(source index, sample), each draw from source i with probability weights[i]; ends when a drawn source ends.

    Each sample's `__position__` (its source's position) becomes the whole mixed stream's position before it:
    `{"mix": rng's bit-generator state before the draw, "sources": [for each source, the position of its next
    sample: this sample's own for the drawn source, for the others the one after their last sample, or where they
    started (None: from their beginning)]}`. To restart there, build source i's stream with
    `start=token["sources"][i]` and pass `start=token`: `rng` is then set to the saved state."""
    positions = [None] * len(streams)
    if start is not None:
        if not isinstance(start, dict) or "mix" not in start or len(start.get("sources") or ()) != len(streams):
            raise ValueError(f"start={start!r}: expected a mixed sample's __position__ for {len(streams)} source(s)")
        rng.bit_generator.state, positions = start["mix"], list(start["sources"])
    return _mixed(streams, weights, rng, positions)


def _mixed(streams, weights, rng: np.random.Generator, positions: list[dict | None]) -> Iterator[tuple[int, dict]]:
    while True:
        state = rng.bit_generator.state
        i = int(rng.choice(len(streams), p=weights)) if len(streams) > 1 else 0
        sample = next(streams[i], None)
        if sample is None:
            return
        positions[i] = sample["__position__"]
        sample["__position__"] = {"mix": state, "sources": list(positions)}
        positions[i] = after(positions[i])
        yield i, sample
