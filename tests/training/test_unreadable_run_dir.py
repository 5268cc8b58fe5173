"""A run_dir whose checkpoints cannot be read (or are gone while events.jsonl records them) is refused, exit 4,
naming each file and its error, and nothing in it is touched; a fresh run_dir still starts from step 0."""

import os

import pytest

from voxfm.pretrain.cli.main import main

pytestmark = pytest.mark.slow


def _args(shard_dir, run_dir, steps):
    return [
        "pretrain",
        "experiment=demo",
        f"data.shards={shard_dir}",
        f"run_dir={run_dir}",
        f"trainer.max_steps={steps}",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.progress_bar=false",
        "trainer.images_every_n_steps=0",
        "data.num_workers=0",
    ]


def test_unreadable_checkpoints_are_refused_not_trained_over(tmp_path, shard_dir, capsys):
    run_dir = tmp_path / "run"
    assert main(_args(shard_dir, run_dir, 4)) == 0
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    for path in checkpoints:  # truncated by a bad copy: every one
        path.write_bytes(path.read_bytes()[:100])
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in checkpoints}
    capsys.readouterr()
    assert main(_args(shard_dir, run_dir, 8)) == 4
    err = capsys.readouterr().err
    assert "holds 3 checkpoint(s) and none can be read: last.ckpt (" in err and "step000004.ckpt (" in err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((run_dir / "checkpoints").iterdir())} == before


def test_a_run_dir_whose_checkpoints_are_gone_is_refused_until_its_record_is_cleared(tmp_path, shard_dir, capsys):
    run_dir = tmp_path / "run"
    assert main(_args(shard_dir, run_dir, 2)) == 0
    for path in (run_dir / "checkpoints").iterdir():
        path.unlink()
    capsys.readouterr()
    assert main(_args(shard_dir, run_dir, 4)) == 4
    assert "events.jsonl records checkpoints up to step 2" in capsys.readouterr().err
    os.remove(run_dir / "events.jsonl")  # asked for: start this run_dir over
    assert main(_args(shard_dir, run_dir, 2)) == 0


def test_a_checkpoint_without_its_config_is_refused_not_resumed_unchecked(tmp_path, shard_dir, capsys):
    import torch

    run_dir = tmp_path / "run"
    assert main(_args(shard_dir, run_dir, 2)) == 0
    for path in (run_dir / "checkpoints").iterdir():
        ckpt = torch.load(path, weights_only=True)
        del ckpt["voxfm_config"]
        torch.save(ckpt, path)
    capsys.readouterr()
    assert main(_args(shard_dir, run_dir, 4)) == 2
    assert "holds no voxfm_config" in capsys.readouterr().err
