import numpy as np
import pytest

from data.crops import random_crops
from data.stream import CropStream, crop_loader


def test_loader_yields_normalised_crops_of_the_configured_size(shard_dir):
    loader = crop_loader(CropStream(str(shard_dir), [32, 32, 32], crops_per_volume=2), batch_size=3, num_workers=0)
    it = iter(loader)
    for _ in range(5):  # more crops than volumes: the stream is infinite (resampled)
        batch = next(it)
        assert batch["image"].shape == (3, 1, 32, 32, 32)
        assert batch["image"].min() >= 0 and batch["image"].max() <= 1
        assert set(batch["modality"]) <= {"CT", "MR"}


def test_two_workers_draw_different_streams(shard_dir):
    loader = crop_loader(CropStream(str(shard_dir), 32, crops_per_volume=1, shuffle_buffer=2), 2, num_workers=2)
    it = iter(loader)
    first, second = next(it)["image"], next(it)["image"]  # consecutive batches come from worker 0 then 1
    assert not np.allclose(first.numpy(), second.numpy())


def test_foreground_bias_puts_crops_on_the_foreground():
    vol = np.zeros((100, 100, 100), np.float32)
    vol[80:96, 80:96, 80:96] = 1.0
    points = np.argwhere(vol > 0.5)[::50].tolist()
    rng = np.random.default_rng(0)
    biased = random_crops(vol, points, (16, 16, 16), 50, foreground_prob=1.0, rng=rng)
    uniform = random_crops(vol, points, (16, 16, 16), 50, foreground_prob=0.0, rng=rng)
    assert all(c.shape == (16, 16, 16) for c in biased + uniform)
    assert all(c.sum() > 0 for c in biased)
    assert np.mean([c.mean() for c in biased]) > 5 * np.mean([c.mean() for c in uniform])


def test_volumes_smaller_than_the_crop_are_padded():
    crops = random_crops(np.ones((10, 40, 12), np.float32), [], (32, 32, 32), 2, 0.5, np.random.default_rng(0))
    assert crops[0].shape == (32, 32, 32) and crops[0].sum() == 10 * 32 * 12
    ct = random_crops(np.zeros((10, 40, 12), np.int16), [], (32, 32, 32), 1, 0.5, np.random.default_rng(0), -1000)
    assert ct[0].dtype == np.int16 and (ct[0] == -1000).sum() == 32**3 - 10 * 32 * 12


def test_bad_options_fail_before_streaming(shard_dir):
    with pytest.raises(ValueError, match="data.foreground_prob=1.5"):
        CropStream(str(shard_dir), 32, foreground_prob=1.5)
    with pytest.raises(ValueError, match="no index.json"):
        CropStream(str(shard_dir.parent), 32)
    with pytest.raises(ValueError, match="1 of 2 shard"):
        CropStream(str(shard_dir / "shard-{000000..000001}.tar"), 32)


def test_brace_patterns_expand_to_the_shards(shard_dir):
    stream = CropStream(str(shard_dir / "shard-{000000..000000}.tar"), 32)
    assert stream.urls == [str(shard_dir / "shard-000000.tar")]
    assert next(iter(crop_loader(stream, 2, 0)))["image"].shape == (2, 1, 32, 32, 32)
