"""The device pool (data/stream/device_pool.py), with the CPU as the device: batches a pure function of (seed, rank)
however the worker threads run, host-to-device bytes per region, distinct volumes per batch, damaged samples
skipped and counted, source weights kept, and a pool the device cannot hold refused before a run writes anything."""

import csv
import io
import re

import numpy as np
import pytest
import torch

from tests.data.test_pool import write_tar
from voxfm.data.stream.device_pool import DevicePoolLoader
from voxfm.data.stream.regions import RegionStream
from voxfm.pretrain.cli.main import main


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """60 small int16 volumes of different shapes in three shards, two damaged samples in the last."""
    out = tmp_path_factory.mktemp("device_pool")
    rng = np.random.default_rng(4)
    for s in range(3):
        shapes = [tuple(int(n) for n in rng.integers(10, 24, 3)) for _ in range(20)]
        vols = [rng.integers(-1000, 1000, shape, dtype=np.int16) for shape in shapes]
        write_tar(out / f"shard-{s:06d}.tar", vols, damaged={3, 11} if s == 2 else set())
    return str(out / "shard-{000000..000002}.tar")


def loader(shards, workers=2, seed=0, batch=8, budget=2**24, **stream):
    s = RegionStream(shards, 8, regions_per_volume=stream.pop("per_volume", 12), seed=seed, group=batch, **stream)
    return DevicePoolLoader(s, batch, workers, torch.device("cpu"), budget, max_volumes=16)


def fingerprints(batches, n):
    return [
        (tuple(b["region"].sum(dim=(1, 2, 3, 4)).tolist()), b["volumes"], tuple(b["low"].tolist()))
        for b, _ in zip(batches, range(n))
    ]


def test_batches_are_a_pure_function_of_seed_and_rank_whatever_the_worker_threads_do(small_set, monkeypatch):
    first = fingerprints(loader(small_set), 200)
    assert fingerprints(loader(small_set), 200) == first  # two threads, scheduled as they happen to be
    assert fingerprints(loader(small_set, seed=1), 200) != first
    monkeypatch.setattr(RegionStream, "_rank_world", staticmethod(lambda: (1, 2)))
    other_rank = fingerprints(loader(small_set), 200)
    assert other_rank != first and len({f[0] for f in other_rank} & {f[0] for f in first}) < 5


def test_regions_are_cut_from_volumes_sent_once_and_batches_stay_diverse(small_set):
    feed = loader(small_set, per_volume=40, budget=2**30)
    batches = [b for b, _ in zip(feed, range(150))]
    region = batches[0]["region"]
    assert region.shape == (8, 1, 8, 8, 8) and region.dtype == torch.int16 and region.device.type == "cpu"
    assert min(b["volumes"] for b in batches) == 8  # 16 volumes held: every batch takes 8 distinct ones
    sent_per_region = feed.figures.sent_bytes / feed.figures.regions
    mean_volume = np.mean([np.prod(s) * 2 for s in [(17, 17, 17)]])  # shapes are 10..23 per axis: ~9.8 kB
    assert sent_per_region < mean_volume / 12  # each volume crosses once for ~40 regions (the first pool staggered)
    assert sent_per_region < 8**3 * 2  # fewer bytes than the region itself would cost on the host path
    assert feed.figures.held_bytes <= 16 * 23**3 * 2


def test_damaged_samples_are_skipped_and_counted_and_the_feed_goes_on(small_set):
    batches = [b for b, _ in zip(loader(small_set, resampled=False), range(120))]
    assert batches[-1]["skipped"] >= 2 and all(b["region"].shape[0] == 8 for b in batches)
    assert batches[-1]["reads"] > 40 and batches[-1]["read_bytes"] > 0


def test_source_weights_hold_in_the_regions_cut(small_set, tmp_path):
    sources = [{"shards": small_set, "weight": 0.75, "name": "a"}, {"shards": small_set, "weight": 0.25, "name": "b"}]
    stream = RegionStream(None, 8, regions_per_volume=4, seed=0, group=8, sources=sources)
    feed = DevicePoolLoader(stream, 8, 2, torch.device("cpu"), 2**24, max_volumes=16)
    share = np.mean([s for b, _ in zip(feed, range(300)) for s in b["source"]])
    assert 0.18 < share < 0.32  # a quarter of the regions from source 1


def test_a_pool_larger_than_the_device_is_refused_before_the_run_writes(tmp_path, shard_dir, capsys):
    run_dir = tmp_path / "run"
    argv = [f"data.shards={shard_dir}", f"run_dir={run_dir}", "data.device_pool_gib=1000000", "trainer.max_steps=2"]
    assert main(["pretrain", "experiment=demo", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.device_pool_gib=1e+06: the CPU (the training device) has only" in err[0]
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()
    argv[2] = "data.device_pool_gib=0.25"
    assert main(["pretrain", "experiment=demo", *argv, "data.loader=process"]) == 2
    assert "needs data.loader=thread" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["demo", "demo_mim"])
def test_demo_recipes_train_resume_and_export_with_the_device_pool(experiment, shard_dir, tmp_path, capsys):
    import voxfm

    run_dir = tmp_path / "run"
    argv = ["pretrain", f"experiment={experiment}", f"data.shards={shard_dir}", f"run_dir={run_dir}"]
    argv += ["data.device_pool_gib=0.25", "trainer.checkpoint_every_n_steps=2"]
    assert main([*argv, "trainer.max_steps=2"]) == 0
    assert "data: device pool ≤ 0.25 GiB on the CPU" in capsys.readouterr().out
    assert main([*argv, "trainer.max_steps=4"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "finished at step 4" in out
    assert main(["export", f"checkpoint={run_dir}", f"output={tmp_path / 'export'}"]) == 0
    backbone = voxfm.load_backbone(tmp_path / "export")
    assert sum(p.numel() for p in backbone.network.parameters()) > 0


@pytest.mark.parametrize("workers,resampled", [(2, True), (1, False), (0, True)])
def test_a_loader_restarted_from_a_batch_state_draws_what_the_uninterrupted_one_drew(small_set, workers, resampled):
    states, prints = [], []
    for batch, _ in zip(loader(small_set, workers=workers, resampled=resampled, per_volume=6), range(120)):
        states.append(batch["_feed_state"])
        prints += fingerprints([batch], 1)
    for k in (0, 17, 64):
        resumed = loader(small_set, workers=workers, resampled=resampled, per_volume=6)
        torch.save({"state": states[k]}, buffer := io.BytesIO())  # as a checkpoint keeps it
        resumed.resume = {0: torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)["state"]}
        assert fingerprints(resumed, 120 - k - 1) == prints[k + 1 :], k


def losses(run_dir) -> dict[int, str]:
    rows = list(csv.DictReader(open(run_dir / "metrics" / "metrics.csv")))
    return {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}


@pytest.mark.slow
def test_a_run_stopped_and_resumed_trains_on_the_batches_of_the_uninterrupted_run(shard_dir, tmp_path, capsys):
    common = ["pretrain", "experiment=demo", f"data.shards={shard_dir}", "data.device_pool_gib=0.25"]
    common += ["data.num_workers=2", "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=3"]
    assert main([*common, f"run_dir={tmp_path / 'whole'}", "trainer.max_steps=6"]) == 0
    assert main([*common, f"run_dir={tmp_path / 'parts'}", "trainer.max_steps=3"]) == 0
    assert main([*common, f"run_dir={tmp_path / 'parts'}", "trainer.max_steps=6"]) == 0
    assert "draws fresh batches" not in capsys.readouterr().out
    whole, parts = losses(tmp_path / "whole"), losses(tmp_path / "parts")
    assert len(whole) >= 5 and parts == whole  # the same batches and views: the same losses, step by step
    for path in (tmp_path / "parts" / "checkpoints").glob("*.ckpt"):  # a crafted pool state: refused, not run
        ckpt = torch.load(path, weights_only=True)
        ckpt["voxfm_feed"]["states"][0]["held"][0] = ckpt["voxfm_feed"]["states"][0]["held"][0][:2]
        torch.save(ckpt, path)
    assert main([*common, f"run_dir={tmp_path / 'parts'}", "trainer.max_steps=7"]) == 0
    assert "draws fresh batches, seeded by the resume step: rank 0's device-pool state: it is damaged" in (
        capsys.readouterr().out
    )
    assert main([*common, f"run_dir={tmp_path / 'parts'}", "trainer.max_steps=8", "data.num_workers=1"]) == 0
    out = capsys.readouterr().out
    assert "draws fresh batches, seeded by the resume step: rank 0's device-pool state: it was saved with 2 data" in out


@pytest.mark.slow
def test_a_run_on_damaged_samples_completes_with_its_skips_counted(small_set, tmp_path, capsys):
    argv = ["pretrain", "experiment=demo", f"data.shards='{small_set}'", f"run_dir={tmp_path / 'run'}"]
    argv += ["data.device_pool_gib=0.25", "data.device_pool_volumes=16", "data.resampled=false"]
    argv += ["data.regions_per_volume=1", "trainer.max_steps=12"]
    assert main(argv) == 0  # 12 steps of 4 regions, one per volume: the pass over the damaged shard is read
    out = capsys.readouterr().out
    skipped = re.search(r"rank 0 skipped (\d+) damaged shard read\(s\) or sample\(s\)", out)
    assert "finished at step 12" in out and skipped and int(skipped.group(1)) >= 2  # each pass reads both again
