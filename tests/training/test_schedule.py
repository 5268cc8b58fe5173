import pytest

from voxfm.pretrain.training.schedule import warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    f = [warmup_cosine(s, warmup_steps=10, total_steps=110, min_factor=0.1) for s in range(130)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.55)
    assert f[110] == pytest.approx(0.1) and f[129] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert all(a < b for a, b in zip(f[:9], f[1:10]))


def test_no_warmup():
    assert warmup_cosine(0, 0, 100) == pytest.approx(1.0)
    assert warmup_cosine(100, 0, 100) == pytest.approx(0.0)
