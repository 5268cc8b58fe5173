"""A device-pool state read back from a checkpoint (data/stream/pool_state.py) is checked in full before anything
replays it: a damaged or crafted one gets a reason (the run then draws fresh batches), never a traceback or a replay
that re-reads forever; a stream changed since the save is told apart from the one saved."""

import copy

import numpy as np
import pytest
import torch

from tests.data.test_pool import write_tar
from voxfm.data.stream.device_pool import DevicePoolLoader
from voxfm.data.stream.pool_state import state_problem, stream_signature
from voxfm.data.stream.regions import RegionStream


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(a real state after 30 batches of a 2-worker device pool, the stream it came from)."""
    out = tmp_path_factory.mktemp("pool_state")
    rng = np.random.default_rng(5)
    for s in range(2):
        write_tar(
            out / f"shard-{s:06d}.tar", [rng.integers(-1000, 1000, (12, 12, 12), dtype=np.int16) for _ in range(9)]
        )
    stream = RegionStream(str(out / "shard-{000000..000001}.tar"), 8, regions_per_volume=6, seed=3, group=4)
    loader = DevicePoolLoader(stream, 4, 2, torch.device("cpu"), 2**24, max_volumes=8)
    state = [b["_feed_state"] for b, _ in zip(loader, range(30))][-1]
    return state, stream


def problem(state, stream, workers=2, max_reread=100):
    signature = stream_signature(stream.sources, stream.resampled)
    return state_problem(state, workers, signature, len(stream.sources), stream.resampled, max_reread)


def test_a_state_the_pool_wrote_is_replayable_and_survives_a_checkpoint(saved):
    state, stream = saved
    assert problem(state, stream) is None
    assert problem(torch.load(_saved(state), weights_only=True), stream) is None


def _saved(state):
    import io

    torch.save(state, buffer := io.BytesIO())
    buffer.seek(0)
    return buffer


CRAFTED = {
    "a held entry of two items": lambda s: s["held"].__setitem__(0, s["held"][0][:2]),
    "a held ordinal never taken": lambda s: s["held"][0].__setitem__(0, s["taken"] + 5),
    "regions left as a string": lambda s: s["held"][0].__setitem__(1, "7"),
    "a position with other keys": lambda s: s["held"][0].__setitem__(2, {"sources": [], "x": 1}),
    "a source position with other keys": lambda s: s["held"][0][2]["sources"].__setitem__(0, {"skip": 1}),
    "another generator": lambda s: s.__setitem__("rng", {"bit_generator": "MT19937", "state": {}}),
    "a PCG64 state without words": lambda s: s["rng"].__setitem__("state", {"state": -1, "inc": 3}),
    "another version": lambda s: s.__setitem__("version", 99),
    "a negative seed": lambda s: s.__setitem__("seed", -4),
    "a billion volumes taken": lambda s: s.__setitem__("taken", 10**9),
    "a worker's last volume missing": lambda s: s["last"].pop(),
    "an unknown field": lambda s: s.__setitem__("extra", 1),
    "not a state": lambda s: s.clear(),
}


@pytest.mark.parametrize("what", sorted(CRAFTED))
def test_a_damaged_or_crafted_state_is_refused_with_its_reason(saved, what):
    state, stream = copy.deepcopy(saved[0]), saved[1]
    CRAFTED[what](state)
    reason = problem(state, stream)
    assert isinstance(reason, str) and reason, what


def test_another_stream_or_worker_count_cannot_replay(saved, tmp_path):
    state, stream = saved
    assert "2 data worker(s), this run has 3" in problem(state, stream, workers=3)
    other = RegionStream(stream.urls[0], 8, regions_per_volume=6, seed=3, group=4)  # one shard of the two
    assert "another shard stream" in problem(state, other)
    passes = RegionStream(stream.urls[0], 8, regions_per_volume=6, seed=3, group=4, resampled=False)
    assert "another shard stream" in problem(state, passes)
    assert "re-read" in problem(state, stream, max_reread=1)
