"""Resumable sample streams (data/stream/sources.py): a stream started from a sample's `__position__` yields that
very sample and then exactly what the original stream yielded — resampled and exact passes, one and two mixed
sources, at a shard's first, middle and last sample and after an empty or truncated shard — having opened only
that sample's shard."""

import io
import itertools
import json
import tarfile

import numpy as np
import pytest
import torch

from voxfm.data.stream.sources import after, epoch_samples, mix, resampled_samples


def _tar(path, samples, duplicate=None, cut=None):
    """A shard of (key, payload) samples; `duplicate`: a key stored twice (a damaged sample webdataset skips past);
    `cut`: keep only this many bytes (a truncated shard)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, data in samples:
            for _ in range(2 if key == duplicate else 1):
                info = tarfile.TarInfo(f"{key}.bin")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path.write_bytes(raw[:cut] if cut else raw)
    return str(path)


def _samples(prefix, n):
    return [(f"{prefix}{i:02d}", f"{prefix}-{i}".encode() * (i + 1)) for i in range(n)]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two shard sets: `a` with shards of 3, 1, 0 (empty), 4 cut short and 2 samples; `b` with 2 and 3."""
    root = tmp_path_factory.mktemp("positions")
    a = [
        _tar(root / "a0.tar", _samples("a0-", 3)),
        _tar(root / "a1.tar", _samples("a1-", 1)),
        _tar(root / "a2.tar", []),
        _tar(root / "a3.tar", _samples("a3-", 4), cut=2 * 1024 + 512 + 3),  # in a3-02's payload
        _tar(root / "a4.tar", _samples("a4-", 2)),
    ]
    b = [_tar(root / "b0.tar", _samples("b0-", 2)), _tar(root / "b1.tar", _samples("b1-", 3))]
    return {"a": a, "b": b}


class Log:
    """The handler and on_shard of a stream: what it reported, in order."""

    def __init__(self):
        self.errors, self.opened = [], []

    def handler(self, err):
        self.errors.append(type(err).__name__)
        return True

    def on_shard(self, url):
        self.opened.append(url)


def _what(sample):
    """A sample as read, without its position: key, url and bytes."""
    return {k: v for k, v in sample.items() if k != "__position__"}


def _resampled(urls, log, start=None):
    return resampled_samples(urls, 0, 5, log.handler, on_shard=log.on_shard, start=start)


def test_resampled_restarts_exactly_at_every_sample_opening_only_its_shard(sets):
    log = Log()
    drawn = [(s, len(log.opened)) for s in itertools.islice(_resampled(sets["a"], log), 40)]
    original, shards = [s for s, _ in drawn], [u.rsplit("/", 1)[1] for u in log.opened]
    after_shard = {shards[n - 2] for s, n in drawn[:30] if s["__position__"]["skip"] == 0 and n >= 2}
    assert {"a2.tar", "a3.tar"} <= after_shard and "ReadError" in log.errors  # after the empty and truncated shard
    assert {s["__position__"]["skip"] for s in original if "a0-" in s["__key__"]} == {0, 1, 2}  # first, middle, last
    for i, sample in enumerate(original[:30]):
        restarted = Log()
        stream = _resampled(sets["a"], restarted, start=sample["__position__"])
        first = next(stream)
        assert restarted.opened == [sample["__url__"]]  # only this sample's shard
        got = [first] + list(itertools.islice(stream, 9))
        assert [_what(s) for s in got] == [_what(s) for s in original[i : i + 10]], i
        assert [s["__position__"] for s in got] == [s["__position__"] for s in original[i : i + 10]]


def test_resampled_restarts_after_a_sample_and_differs_by_worker_seed(sets):
    log = Log()
    original = list(itertools.islice(_resampled(sets["a"], log), 30))
    for i, sample in enumerate(original[:-10]):
        resumed = _resampled(sets["a"], Log(), start=after(sample["__position__"]))
        assert [_what(s) for s in itertools.islice(resumed, 10)] == [_what(s) for s in original[i + 1 : i + 11]], i
    other = resampled_samples(sets["a"], 0, 6, Log().handler)
    assert [s["__key__"] for s in itertools.islice(other, 30)] != [s["__key__"] for s in original]


@pytest.mark.parametrize("n_slots", [2, 6])  # whole shards per slot; every slot reads every shard (5 < 6)
def test_epoch_restarts_exactly_and_passes_still_split_over_slots(sets, n_slots):
    keys = {0: [], 1: []}
    for slot in range(n_slots):
        original = list(epoch_samples(sets["a"], 3, slot, n_slots, Log().handler, passes=2))
        for s in original:
            keys[s["__position__"]["pass"]].append(s["__key__"])
        for i, sample in enumerate(original):
            restarted = Log()
            stream = epoch_samples(sets["a"], 3, slot, n_slots, restarted.handler, 2, restarted.on_shard,
                                   start=sample["__position__"])  # fmt: skip
            got = list(stream)
            assert restarted.opened[0] == sample["__url__"]
            assert [_what(s) for s in got] == [_what(s) for s in original[i:]], (slot, i)
            resumed = epoch_samples(sets["a"], 3, slot, n_slots, Log().handler, 2, start=after(sample["__position__"]))
            assert [_what(s) for s in resumed] == [_what(s) for s in original[i + 1 :]], (slot, i)
    for p in (0, 1):  # a pass: every readable sample once, over all slots
        assert len(keys[p]) == len(set(keys[p])) == 3 + 1 + 2 + 2, p


def _mixed(sets, names, mode, token=None):
    """The mixed stream of data worker 0 of 2 over the named sets, started at `token` if given."""
    starts = token["sources"] if token else [None] * len(names)
    streams = [
        resampled_samples(sets[n], 0, 5 + 7919 * i, Log().handler, start=starts[i])
        if mode == "resampled"
        else epoch_samples(sets[n], 7919 * i, 0, 2, Log().handler, start=starts[i])
        for i, n in enumerate(names)
    ]
    weights = [1 / len(names)] * len(names)
    return mix(streams, weights, np.random.default_rng([0, 0, 0, 1]), start=token)


def _stored(token, tmp_path):
    """The token as a checkpoint holds it: through JSON, then torch.save / torch.load(weights_only=True)."""
    path = tmp_path / "token.pt"
    torch.save({"position": json.loads(json.dumps(token))}, path)
    return torch.load(path, weights_only=True)["position"]


@pytest.mark.parametrize("mode", ["resampled", "epoch"])
@pytest.mark.parametrize("names", [("a",), ("a", "b")])
def test_mixed_stream_restarts_exactly_from_a_stored_token(sets, mode, names, tmp_path):
    original = list(itertools.islice(_mixed(sets, names, mode), 40))
    sources = [i for i, _ in original]
    assert set(sources) == set(range(len(names)))
    for i, (_, sample) in enumerate(original[:30]):
        token = _stored(sample["__position__"], tmp_path)
        assert token == sample["__position__"] and len(token["sources"]) == len(names)
        got = list(itertools.islice(_mixed(sets, names, mode, token), 10))
        assert [(j, _what(s)) for j, s in got] == [(j, _what(s)) for j, s in original[i : i + 10]], i
        assert got[0][1]["__position__"] == sample["__position__"]


def test_mixed_token_holds_each_sources_next_position(sets):
    original = list(itertools.islice(_mixed(sets, ("a", "b"), "resampled"), 12))
    last = [None, None]
    for i, sample in original:
        token = sample["__position__"]
        assert token["sources"][1 - i] == (last[1 - i] and after(last[1 - i]))  # None until that source yields
        last[i] = token["sources"][i]


def test_errors_among_the_skipped_samples_are_not_reported_again(tmp_path):
    shard = _tar(tmp_path / "d.tar", _samples("d", 4), duplicate="d01")  # the error comes with d01
    log = Log()
    original = list(itertools.islice(resampled_samples([shard], 0, 0, log.handler), 4))
    assert [s["__key__"] for s in original] == ["d00", "d01", "d02", "d03"] and log.errors == ["ValueError"]
    for i, expected in [(1, ["ValueError"]), (2, []), (3, [])]:
        restarted = Log()
        first = next(resampled_samples([shard], 0, 0, restarted.handler, start=original[i]["__position__"]))
        assert first["__key__"] == original[i]["__key__"] and restarted.errors == expected, i


def test_a_start_that_is_not_a_position_is_refused(sets):
    with pytest.raises(ValueError, match="start="):
        resampled_samples(sets["a"], 0, 0, Log().handler, start={"pass": 0})
    with pytest.raises(ValueError, match="start="):
        epoch_samples(sets["a"], 0, 0, 1, Log().handler, start={"rng": {}, "skip": 0})
    with pytest.raises(ValueError, match="2 source"):
        mix([iter([]), iter([])], [0.5, 0.5], np.random.default_rng(0), start={"mix": {}, "sources": [None]})
