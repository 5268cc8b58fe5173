"""The device pool's state after a batch (`feed_state`), what a resumed run re-reads from it (`replay_plan`,
`replay_starts`) and the check a state read back from a checkpoint must pass before anything replays it
(`state_problem`).

A state is small, plain data (JSON- and `torch.load(weights_only=True)`-safe): the volumes the pool holds — their
ordinal (the pool's count of volumes taken before each), regions left, their sample's position in its worker's shard
stream (data/stream/sources.py) and key —, the count of volumes taken, each worker's last one, the pool's
generator, the seed and a signature of the stream (its shard URLs per source, their weights, resampled or passes).
A checkpoint is a file anyone may hand over, so every field is checked for type and range, positions against the
stream's own shape, and the re-reading a replay implies is bounded: a damaged or crafted record is refused with
its reason (the run then draws fresh batches), never a traceback or a run that re-reads forever.
"""

from __future__ import annotations

import hashlib
import json

STATE_VERSION = 1
MAX_INT = 2**128  # PCG64's state words are 128-bit


def stream_signature(sources, resampled: bool) -> str:
    """What a saved position means depends on: each source's shard URLs and weight, and resampled or passes."""
    described = [bool(resampled), [[list(s.urls), round(float(s.weight), 12)] for s in sources]]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


def feed_state(seed: int, workers: int, signature: str, pool, last: dict[int, tuple[int, dict | None]]) -> dict:
    """The state that rebuilds `pool` after this batch (see the module docstring)."""
    return {
        "version": STATE_VERSION,
        "seed": seed,
        "workers": workers,
        "stream": signature,
        "taken": 1 + max((index * workers + w for w, (index, _) in last.items()), default=-1),
        "held": [[v.ordinal, v.uses_left, v.position, v.key] for v in pool.held if v.uses_left > 0],
        "last": [[w, index, position] for w, (index, position) in sorted(last.items())],
        "rng": pool.rng.bit_generator.state,
    }


def replay_plan(saved: dict) -> dict[int, tuple[int, int]]:
    """worker → (index of its first volume to re-read, index of its last taken one): from its oldest held volume (or
    its last taken one) to its last taken one."""
    workers, taken = saved["workers"], saved["taken"]
    plan = {}
    for w in range(workers):
        final = (taken - 1 - w) // workers if taken > w else -1
        mine = [ordinal // workers for ordinal, *_ in saved["held"] if ordinal % workers == w]
        lasts = [index for worker, index, _ in saved["last"] if worker == w]
        first = min(mine) if mine else (lasts[0] if lasts else final + 1)
        if final >= first:
            plan[w] = (first, final)
    return plan


def replay_starts(saved: dict) -> dict[int, dict]:
    """worker → the position its stream restarts at (its first volume to re-read, `replay_plan`); a worker that
    had nothing taken starts at the beginning."""
    workers = saved["workers"]
    positions = {ordinal: position for ordinal, _, position, _ in saved["held"]}
    positions |= {index * workers + w: position for w, index, position in saved["last"]}
    return {w: positions[first * workers + w] for w, (first, _) in replay_plan(saved).items()}


def _count(value, low: int = 0, high: int = 2**62) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def _rng_problem(state) -> str | None:
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        return "a generator state that is not numpy's PCG64"
    words = state.get("state")
    if not isinstance(words, dict) or not all(_count(words.get(k), 0, MAX_INT) for k in ("state", "inc")):
        return "a PCG64 state without its two 128-bit words"
    if state.get("has_uint32") not in (0, 1) or not _count(state.get("uinteger"), 0, 2**32):
        return "a PCG64 state with a bad cached word"
    return None


def _source_problem(position, resampled: bool) -> str | None:
    if position is None:
        return None
    keys = ("rng", "skip") if resampled else ("pass", "shard", "skip", "seen")
    if not isinstance(position, dict) or set(position) != set(keys):
        return f"a shard-stream position without exactly {', '.join(keys)}"
    if resampled:
        return _rng_problem(position["rng"]) or (None if _count(position["skip"]) else "a negative skip")
    return None if all(_count(position[k]) for k in keys) else "a negative or non-integer pass position"


def _position_problem(position, n_sources: int, resampled: bool) -> str | None:
    if not isinstance(position, dict) or set(position) != {"mix", "sources"}:
        return "a position that is not a mixed-stream position"
    if not isinstance(position["sources"], list) or len(position["sources"]) != n_sources:
        return f"a position for another number of sources than this stream's {n_sources}"
    for source in position["sources"]:
        if problem := _source_problem(source, resampled):
            return problem
    return _rng_problem(position["mix"])


def state_problem(state, workers: int, signature: str, n_sources: int, resampled: bool, max_reread: int) -> str | None:
    """Why a saved state cannot be replayed by this run (None: it can): see the module docstring."""
    fields = {"version", "seed", "workers", "stream", "taken", "held", "last", "rng"}
    if not isinstance(state, dict) or set(state) != fields:
        return "it is damaged (not a device-pool state of this voxfm)"
    if state["version"] != STATE_VERSION:
        return f"its format is version {state['version']!r}, this voxfm reads {STATE_VERSION}"
    if state["workers"] != workers:
        return f"it was saved with {state['workers']} data worker(s), this run has {workers}"
    if state["stream"] != signature:
        return "it was saved for another shard stream (shards, source weights or data.resampled changed)"
    if not _count(state["seed"]) or not _count(state["taken"]):
        return "it is damaged (seed or count of volumes taken)"
    if problem := _rng_problem(state["rng"]):
        return f"it is damaged ({problem})"
    held, last, taken = state["held"], state["last"], state["taken"]
    if not isinstance(held, list) or not isinstance(last, list) or len(last) > workers:
        return "it is damaged (held volumes or workers' last volumes)"
    ordinals = set()
    for entry in held:
        if not (isinstance(entry, list) and len(entry) == 4 and _count(entry[0], 0, taken) and _count(entry[1], 1)):
            return "it is damaged (a held volume's ordinal or regions left)"
        if entry[0] in ordinals or not isinstance(entry[3], str):
            return "it is damaged (a held volume twice, or without its key)"
        ordinals.add(entry[0])
        if problem := _position_problem(entry[2], n_sources, resampled):
            return f"it is damaged ({problem})"
    for entry in last:
        if not (isinstance(entry, list) and len(entry) == 3 and _count(entry[0], 0, workers) and _count(entry[1])):
            return "it is damaged (a worker's last volume)"
        if problem := _position_problem(entry[2], n_sources, resampled):
            return f"it is damaged ({problem})"
    expected = {w: (taken - 1 - w) // workers for w in range(min(workers, taken))}  # each worker's last index
    if {entry[0]: entry[1] for entry in last} != expected or len(last) != len(expected):
        return "it is damaged (the workers' last volumes do not match the volumes taken)"
    reread = sum(final - first + 1 for first, final in replay_plan(state).values())
    if reread > max_reread:
        return f"replaying it would re-read {reread} volumes (at most {max_reread} for this pool)"
    return None
