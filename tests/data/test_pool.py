"""The pool of decoded volumes (data/stream/pool.py): shard bytes per region, distinct volumes per batch, staggered
refresh, the memory budget, a stream that is a pure function of its seed, and damaged samples still skipped."""

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest

from voxfm.data.ingest import payload
from voxfm.data.phantoms import ct_phantom
from voxfm.data.stream.loader import ThreadLoader
from voxfm.data.stream.pool import Volume, VolumePool
from voxfm.data.stream.regions import RegionStream


def write_tar(path, volumes: list[np.ndarray], damaged: set[int] = frozenset()) -> None:
    """A shard of `volumes` as `voxfm shard` writes them (blosc2 payload + metadata); `damaged` indices get a
    payload that does not decode."""
    with tarfile.open(path, "w") as tar:
        for i, vol in enumerate(volumes):
            meta = {
                "modality": "CT",
                "shape": list(vol.shape),
                "normalisation": {"low": -1000.0, "high": 1000.0},
                "foreground_points": [[s // 2 for s in vol.shape]],
            }
            files = {
                "image.b2": b"not a frame" if i in damaged else payload.encode(vol),
                "json": json.dumps(meta).encode(),
            }
            for ext, data in files.items():
                info = tarfile.TarInfo(f"v{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def ct_sized(tmp_path_factory):
    """Three CT-sized volumes: 512×512×300 at 0.7×0.7×1.5 mm resampled to the 1.5 mm shard grid (240×240×300
    int16 HU, ~17 MB each in the shard)."""
    out = tmp_path_factory.mktemp("ct_sized")
    rng = np.random.default_rng(0)
    write_tar(out / "shard-000000.tar", [ct_phantom((240, 240, 300), rng) for _ in range(3)])
    return str(out / "shard-{000000..000000}.tar")


@pytest.fixture(scope="module")
def many_small(tmp_path_factory):
    """80 small volumes in two shards."""
    out = tmp_path_factory.mktemp("many_small")
    rng = np.random.default_rng(1)
    for s in range(2):
        write_tar(
            out / f"shard-{s:06d}.tar", [rng.integers(-1000, 1000, (20, 20, 20), dtype=np.int16) for _ in range(40)]
        )
    return str(out / "shard-{000000..000001}.tar")


def _drain(stream: RegionStream, n: int) -> list[dict]:
    regions = stream.worker_stream(0)
    return [next(regions) for _ in range(n)]


def test_shard_bytes_per_region_fall_by_the_ratio_of_regions_per_read_on_ct_sized_volumes(ct_sized):
    common = dict(region_size=96, foreground_prob=0.67, seed=3)
    off = _drain(RegionStream(ct_sized, regions_per_volume=4, shuffle_buffer=8, **common), 240)
    on = _drain(RegionStream(ct_sized, regions_per_volume=160, pool_gib=1.0, pool_volumes=3, group=3, **common), 4800)
    per_region = {name: regions[-1]["read_bytes"] / len(regions) for name, regions in (("off", off), ("on", on))}
    assert per_region["off"] > 3.5e6  # a ~17 MB volume read for every 4 regions
    # 160 regions per read promised: 40x fewer shard bytes per region than 4. The pool's first volumes leave early
    # (staggered lifetimes: 1/3, 2/3, 3/3 of 160), so over this short stream the ratio is a little under 40.
    assert 36 <= per_region["off"] / per_region["on"] <= 41


def test_a_batch_draws_from_min_batch_pool_distinct_volumes(many_small):
    stream = RegionStream(
        many_small, 8, regions_per_volume=150, pool_gib=1.0, pool_volumes=40, group=32, seed=0, resampled=False
    )
    batches = ThreadLoader(stream, batch_size=32, num_threads=2)
    seen = [b["volumes"] for _, b in zip(range(30), batches)]
    assert min(seen) == 32  # the floor the defaults promise is 24 of 32; a pool of >= 32 volumes gives all 32
    small = RegionStream(
        many_small, 8, regions_per_volume=150, pool_gib=1.0, pool_volumes=24, group=32, seed=0, resampled=False
    )
    assert min(b["volumes"] for _, b in zip(range(30), ThreadLoader(small, 32, 1))) == 24  # pool < batch: the pool


def _volumes(n: int, nbytes_each: int = 8000):
    side = round((nbytes_each / 2) ** (1 / 3))
    for i in range(n):
        yield Volume(np.zeros((side, side, side), np.int16), [], 0.0, 1.0, "CT", key=f"v{i}")


def test_pool_lifetimes_are_staggered_then_full_and_the_budget_bounds_what_is_held():
    served = Counter()
    pool = VolumePool(
        _volumes(1000),
        (4, 4, 4),
        regions_per_volume=20,
        budget_bytes=10 * 8000,
        max_volumes=64,
        foreground_prob=0.0,
        rng=np.random.default_rng(0),
    )
    held = []
    for group, _ in zip(pool.groups(6), range(400)):
        assert len({v.key for _, v in group}) == 6
        served.update(v.key for _, v in group)
        held.append(len(pool.held))
    assert max(held) == 10 and min(held) >= 9  # the budget (10 volumes of 8000 bytes), refilled one at a time
    first = [served[f"v{i}"] for i in range(10)]
    assert first == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]  # staggered: k/10 of 20
    finished = [served[f"v{i}"] for i in range(10, 100)]
    assert set(finished) == {20}  # every later read serves exactly regions_per_volume


def test_the_pooled_stream_is_a_pure_function_of_seed_rank_and_worker(many_small, monkeypatch):
    def keys(seed, worker=0, rank=0):
        monkeypatch.setattr(RegionStream, "_rank_world", staticmethod(lambda: (rank, 2)))
        stream = RegionStream(many_small, 8, regions_per_volume=20, pool_gib=0.5, pool_volumes=16, group=8, seed=seed)
        regions = stream.worker_stream(worker, 2)
        return [(r["volume"], r["region"].sum().item()) for r in (next(regions) for _ in range(200))]

    assert keys(5) == keys(5)
    assert keys(5) != keys(6)  # a resumed run (seed + resume step) draws fresh regions
    assert keys(5) != keys(5, worker=1) and keys(5) != keys(5, rank=1)


def test_damaged_samples_are_skipped_and_counted_with_the_pool_on(tmp_path):
    rng = np.random.default_rng(2)
    write_tar(
        tmp_path / "shard-000000.tar",
        [rng.integers(0, 100, (16, 16, 16), dtype=np.int16) for _ in range(20)],
        damaged={3, 7, 11},
    )
    stream = RegionStream(
        str(tmp_path / "shard-{000000..000000}.tar"),
        8,
        regions_per_volume=5,
        pool_gib=0.1,
        pool_volumes=4,
        group=4,
        resampled=False,
    )
    regions = stream.worker_stream(0)
    seen = [next(regions) for _ in range(200)]  # more than two passes over 17 good volumes
    assert {r["volume"].split("#")[1] for r in seen} == {f"v{i:04d}" for i in range(20)} - {"v0003", "v0007", "v0011"}
    assert max(r["skipped"] for r in seen if r["reads"] <= 20) == 3  # the first pass: its 3 damaged samples
    assert seen[-1]["skipped"] == 3 * (seen[-1]["reads"] // 20) + sum(
        i < seen[-1]["reads"] % 20 for i in (3, 7, 11)
    )  # every pass counts its 3 again


def test_a_run_prints_the_loaders_memory_and_logs_the_feed_figures(shard_dir, tmp_path, capsys):
    from voxfm.pretrain.cli.main import main

    assert (
        main(
            [
                "pretrain",
                "experiment=demo",
                f"data.shards={shard_dir}",
                f"run_dir={tmp_path}",
                "data.regions_per_volume=12",
                "data.pool_gib=0.25",
                "data.pool_volumes=5",
                "data.batch_size=4",
                "data.num_workers=1",
                "trainer.max_steps=6",
                "trainer.log_every_n_steps=3",
                "trainer.checkpoint_every_n_steps=6",
                "trainer.images_every_n_steps=0",
                "trainer.progress_bar=false",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "volume pool ≤ 0.25 GiB per rank (1 worker(s) × ≤ 5 decoded volumes" in out
    assert "each volume read serves 12 regions" in out
    rows = (tmp_path / "metrics" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [r.split(",") for r in rows[1:] if r.split(",")[header.index("data/regions_per_read")]]
    windows = [
        {
            k: float(r[header.index(f"data/{k}")])
            for k in ("regions_per_read", "distinct_volumes", "shard_mb_per_region")
        }
        for r in logged
    ]
    assert len(windows) == 2  # steps 3 and 6: figures since the previous logging step
    # the first window (12 regions) includes the pool's first fill of 5 volumes; later windows only refills
    assert windows[0]["regions_per_read"] == pytest.approx(12 / 5) and 12 / 5 < windows[1]["regions_per_read"] <= 12
    assert all(w["distinct_volumes"] == 4 for w in windows)  # each batch of 4 from 4 of the 5 volumes held
    assert windows[0]["shard_mb_per_region"] > windows[1]["shard_mb_per_region"] > 0


def test_a_loader_whose_batch_is_not_the_pools_group_is_refused(many_small):
    stream = RegionStream(many_small, 8, pool_gib=0.1, group=8)
    with pytest.raises(ValueError, match="groups of 8 regions but the loader's batch is 4"):
        ThreadLoader(stream, batch_size=4, num_threads=1)
