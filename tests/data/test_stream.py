import re

import numpy as np
import pytest
import torch

from voxfm.data.stream.batches import collate_regions
from voxfm.data.stream.crops import random_crops
from voxfm.data.stream.regions import RegionStream, region_loader


def test_loader_yields_raw_regions_with_their_normalisation(shard_dir):
    loader = region_loader(
        RegionStream(str(shard_dir), [32, 32, 32], regions_per_volume=2), batch_size=3, num_workers=0
    )
    it = iter(loader)
    for _ in range(5):  # more regions than volumes: the stream is infinite (resampled)
        batch = next(it)
        assert batch["region"].shape == (3, 1, 32, 32, 32)
        assert batch["region"].dtype in (torch.int16, torch.float32)  # stored dtype, not normalised floats
        assert batch["low"].shape == batch["high"].shape == (3,) and (batch["high"] > batch["low"]).all()
        assert set(batch["modality"]) <= {"CT", "MR"}


def test_a_batch_mixing_dtypes_is_promoted_losslessly():
    ct = {
        "region": torch.full((1, 2, 2, 2), -1000, dtype=torch.int16),
        "low": -1000.0,
        "high": 1000.0,
        "modality": "CT",
    }
    mr = {"region": torch.full((1, 2, 2, 2), 0.5), "low": 0.0, "high": 1.0, "modality": "MR"}
    assert collate_regions([ct, ct])["region"].dtype == torch.int16
    mixed = collate_regions([ct, mr])
    assert mixed["region"].dtype == torch.float32 and mixed["region"][0].min() == -1000
    assert mixed["low"].tolist() == [-1000.0, 0.0] and mixed["modality"] == ["CT", "MR"]


def test_two_workers_draw_different_streams(shard_dir):
    loader = region_loader(RegionStream(str(shard_dir), 32, regions_per_volume=1, shuffle_buffer=2), 2, num_workers=2)
    it = iter(loader)
    first, second = next(it)["region"].float(), next(it)["region"].float()  # from worker 0, then worker 1
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
        RegionStream(str(shard_dir), 32, foreground_prob=1.5)
    with pytest.raises(ValueError, match="data.regions_per_volume=0"):
        RegionStream(str(shard_dir), 32, regions_per_volume=0)
    with pytest.raises(ValueError, match="no index.json"):
        RegionStream(str(shard_dir.parent), 32)
    with pytest.raises(ValueError, match="1 of 2 shard"):
        RegionStream(str(shard_dir / "shard-{000000..000001}.tar"), 32)


def test_brace_patterns_expand_to_the_shards(shard_dir):
    stream = RegionStream(str(shard_dir / "shard-{000000..000000}.tar"), 32)
    assert stream.urls == [str(shard_dir / "shard-000000.tar")]
    assert next(iter(region_loader(stream, 2, 0)))["region"].shape == (2, 1, 32, 32, 32)


def test_big_endian_payloads_become_native_regions():
    import json

    from voxfm.data.ingest import payload
    from voxfm.data.stream.samples import cut_regions

    vol = np.arange(16**3, dtype=">i2").reshape(16, 16, 16)
    sample = {
        "json": json.dumps(
            {
                "normalisation": {"low": 0.0, "high": 4096.0},
                "foreground_points": [],
                "modality": "CT",
                "shape": [16, 16, 16],
            }
        ).encode(),
        "image.b2": payload.encode(vol),
    }
    regions = cut_regions(sample, 8, 2, 0.5, np.random.default_rng(0))
    assert regions[0]["region"].dtype == torch.int16 and regions[0]["region"].shape == (1, 8, 8, 8)
    assert regions[0]["region"].min() >= 0 and regions[0]["region"].max() < 16**3


def _damaged_set(shard_dir, out, n: int = 70, every: int = 10):
    """`n` samples (copies of the phantoms) in one shard, every `every`-th (from index 5) damaged in one of the ways
    a sample can be: each must be skipped and counted where it is read. → (folder, number damaged)."""
    import io
    import json
    import tarfile

    import blosc2

    from voxfm.data.ingest import payload

    def forged(frame, shape=None, dtype=None):
        schunk = blosc2.schunk_from_cframe(frame, True)
        kind, stored, descr = schunk.vlmeta["__pack_tensor__"]
        schunk.vlmeta["__pack_tensor__"] = (kind, shape or stored, dtype or descr)
        return schunk.to_cframe()

    damages = [
        lambda m, f: (m, payload.encode(np.zeros((2, *m["shape"]), np.int16))),  # 4-D payload, 3-D metadata
        lambda m, f: ({**m, "modality": [m["modality"]]}, f),  # a list, not a string
        lambda m, f: ({**m, "modality": "XR"}, f),
        lambda m, f: ({**m, "normalisation": {**m["normalisation"], "high": float("inf")}}, f),
        lambda m, f: ({**m, "normalisation": {**m["normalisation"], "low": 1.0, "high": 0.0}}, f),  # inverted
        lambda m, f: (m, forged(payload.encode(np.zeros(m["shape"], np.int64)), dtype="|O")),
        lambda m, f: ({**m, "shape": [4096] * 3}, forged(f, shape=(4096,) * 3)),  # 128 GiB: over the byte budget
        lambda m, f: (m, forged(payload.encode(np.zeros((4, 4, 4), np.int16)), shape=m["shape"])),  # a shape lie
    ]
    with tarfile.open(shard_dir / "shard-000000.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    good = [(json.loads(files[k]), files[k[: -len("json")] + "image.b2"]) for k in sorted(files) if k.endswith(".json")]
    buf, damaged = io.BytesIO(), 0
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            meta, frame = good[i % len(good)]
            if i % every == 5:
                meta, frame = damages[damaged % len(damages)](meta, frame)
                damaged += 1
            for ext, data in (("json", json.dumps(meta).encode()), ("image.b2", frame)):
                info = tarfile.TarInfo(f"s{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(buf.getvalue())
    index = json.loads((shard_dir / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**index, "shards": [{"name": "shard-000000.tar", "n_samples": n}]}))
    return out, damaged


@pytest.mark.parametrize("pool_gib", [0, 1])
def test_a_run_over_damaged_samples_completes_and_counts_each_skip(shard_dir, tmp_path, capsys, caplog, pool_gib):
    """One exact pass (resampled=false) over 80 samples, 8 damaged: 72 good regions = 9 steps of 8. With the volume
    pool on, the pool reads ahead into the next pass: the skips it met by the last batch are counted too."""
    from voxfm.pretrain.cli.main import main

    shards, damaged = _damaged_set(shard_dir, tmp_path / "damaged", n=80)
    assert damaged == 8
    assert (
        main(
            [
                "pretrain",
                "experiment=demo",
                f"data.shards={shards}",
                f"run_dir={tmp_path / 'run'}",
                "data.resampled=false",
                "data.regions_per_volume=1",
                "data.shuffle_buffer=1",
                "data.batch_size=8",
                f"data.pool_gib={pool_gib}",
                "data.pool_volumes=16",
                "data.num_workers=0",
                "trainer.max_steps=9",
                "trainer.log_every_n_steps=1",
                "trainer.checkpoint_every_n_steps=9",
                "trainer.images_every_n_steps=0",
                "trainer.progress_bar=false",
            ]
        )
        == 0
    )
    printed = re.search(r"skipped (\d+) damaged shard read\(s\) or sample\(s\)", capsys.readouterr().out)
    warned = caplog.text.count("voxfm: skipped damaged data")  # the workers may read past the last batch
    assert printed and (int(printed[1]) == damaged if pool_gib == 0 else damaged <= int(printed[1]) <= warned)
    for reason in (
        "shape (2, ",
        "modality=['",
        "modality='XR'",
        "high=inf",
        "low=1.0, high=0.0",
        "dtype '|O' refused",
        "over the budget",
        "but the frame holds 128",
    ):  # each skip says why
        assert reason in caplog.text, reason
