"""Random numbers hashed from a key tensor (data/views/counter_random.py): uniform, normal and integer draws with the
right statistics, distinct streams and keys, the same bits eager and compiled."""

import torch

from voxfm.data.views.counter_random import CounterRandom, as_key, key_of, step_key


def test_draws_have_their_distributions():
    rng = CounterRandom(step_key(torch.device("cpu"), seed=0, step=0, rank=0))
    u = rng.rand(200_000)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    assert torch.histc(u, bins=10, min=0, max=1).div(u.numel()).sub(0.1).abs().max() < 0.005  # flat
    z = rng.randn(200_000)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01 and torch.isfinite(z).all()
    assert abs(float((z.abs() < 1).float().mean()) - 0.6827) < 0.005  # the normal's one-sigma mass
    k = rng.randint(6, 100_000)
    assert k.min() == 0 and k.max() == 6 and torch.bincount(k).div(k.numel()).sub(1 / 7).abs().max() < 0.01
    keys = rng.ranking_keys(64, 300)
    assert all(row.unique().numel() == 300 for row in keys)  # no ties to break when sorting


def test_streams_keys_and_steps_differ_and_replay():
    a, b = CounterRandom(as_key(1)), CounterRandom(as_key(1))
    first, second = a.rand(1000), a.rand(1000)
    assert not torch.equal(first, second)  # each call is a stream of its own
    assert torch.equal(b.rand(1000), first) and torch.equal(b.rand(1000), second)  # the same sequence replays
    assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1])) < 0.1
    assert len({key_of(s, t, r) for s in range(3) for t in range(50) for r in range(4)}) == 600
    assert key_of(0, 5, 1) == key_of(0, 5, 1, micro=0) != key_of(0, 5, 1, micro=1)  # micro-batches: views of their own
    assert max(key_of(0, t, r) for t in range(100) for r in range(8)) >= 1 << 32  # 64-bit keys
    assert not torch.equal(CounterRandom(as_key(2)).rand(1000), first)


def test_streams_are_different_functions_not_one_sequence_shifted():
    """Two streams with the same outer key (the same Weyl sequence) but different inner keys share no run of values;
    with the inner key equal too they would be one sequence."""
    key = as_key(7)
    same_outer = key.clone()
    same_outer[0, 1] ^= 0x1234
    a, b = CounterRandom(key).bits(4096), CounterRandom(same_outer).bits(4096)
    assert int((a == b).sum()) <= 1
    shifted = key.clone()
    shifted[0, 0] = (key[0, 0] + 0x61C88647 * 5) & 0xFFFFFFFF  # the outer key of the sequence moved 5 places on
    c = CounterRandom(shifted).bits(4096)
    assert torch.equal(c[:-5], a[5:])  # the shift the inner key breaks: same inner key, same values, shifted


def test_compiled_draws_are_the_eager_bits():
    def draws(key):
        rng = CounterRandom(key)
        return rng.bits(4, 33), rng.rand(7), rng.randint(5, 9), rng.randn(3, 5)

    key = step_key(torch.device("cpu"), seed=3, step=11, rank=1)
    eager = draws(key)
    compiled = torch.compile(draws, fullgraph=True, dynamic=False)(key)
    assert (
        torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1]) and torch.equal(eager[2], compiled[2])
    )
    assert torch.allclose(eager[3], compiled[3], atol=1e-5)  # log/cos: within an ulp or so
