import json
import math

import numpy as np
import pytest

from tests.data.test_pool import write_tar
from voxfm.pretrain.bench.device_cut import bench_cut_paths, format_cut_paths, schedule

SHAPE, REGION, PER_VOLUME, BATCH, N = (48, 48, 48), (24, 24, 24), 12, 8, 6


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Both feeds measured on a shard set of six 48³ int16 volumes (its index counts them, so each pool holds the
    six), 24³ regions, 12 per volume, batches of 8."""
    out = tmp_path_factory.mktemp("cut_paths")
    rng = np.random.default_rng(0)
    write_tar(out / "shard-000000.tar", [rng.integers(-1000, 1000, SHAPE).astype(np.int16) for _ in range(N)])
    index = {"shards": [{"name": "shard-000000.tar", "n_samples": N}], "samples": [], "config": {}}
    (out / "index.json").write_text(json.dumps(index))
    return bench_cut_paths(str(out), REGION, PER_VOLUME, BATCH)


def test_the_device_cut_sends_each_volume_once_instead_of_every_region(paths):
    """Host-to-device bytes per region: the region's own on the host path, a volume's over the regions it serves on
    the device path (± a volume read at the window's edges); shard reads are the same one read per 12 regions."""
    host, device = paths["host_cut"], paths["device_cut"]
    region_mb, volume_mb = math.prod(REGION) * 2 / 1e6, math.prod(SHAPE) * 2 / 1e6
    assert host["h2d_mb_per_region"] == round(region_mb, 4)
    assert device["h2d_mb_per_region"] < host["h2d_mb_per_region"]
    assert device["h2d_mb_per_region"] == pytest.approx(volume_mb / PER_VOLUME, rel=0.1)
    assert host["shard_gb_per_s_per_gpu"] > 0
    assert device["shard_gb_per_s_per_gpu"] == pytest.approx(host["shard_gb_per_s_per_gpu"], rel=0.15)


def test_both_paths_count_host_cpu_and_the_device_pool_its_bytes(paths):
    host, device = paths["host_cut"], paths["device_cut"]
    for row in (host, device):
        assert row["cpu_ms_per_region"] > 0 and row["regions_per_s"] > 0
        assert 0 < row["loop_thread_cpu_ms_per_region"] <= row["cpu_ms_per_region"]
        assert row["cores_per_gpu"] == pytest.approx(row["cpu_ms_per_region"] * 9, abs=0.01)  # at 9,000 regions/s
        assert row["pool_volumes"] == N and row["distinct_volumes_per_batch"] == N  # batch 8 > 6 volumes held
        assert (row["warmup_batches"], row["timed_batches"]) == schedule(N, PER_VOLUME, BATCH) == (9, 48)
    assert host["device_pool_mb"] is None
    assert device["device_pool_mb"] == round(N * math.prod(SHAPE) * 2 / 1e6, 1)  # the whole set, held on the device
    table = "\n".join(format_cut_paths(paths, PER_VOLUME, BATCH))
    assert "host-cut" in table and "device-cut" in table and "host-to-device MB per region" in table
