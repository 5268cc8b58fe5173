"""What `voxfm pretrain` guarantees, `voxfm finetune` keeps: its run_dir locked, a changed recipe refused on rerun
before anything is written, unreadable or lost checkpoints refused rather than started over, Ctrl-C checkpointed at
that step, one metrics.csv per arm across resumes, a planted link never written through."""

import csv
import json
import os
import shutil
import signal

import pytest

import voxfm.pretrain.finetune.loop
from tests.conftest import labelled_shards, phantom_images
from voxfm.data.ingest.locks import folder_lock
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint

pytestmark = pytest.mark.slow


def _finetune(labelled, run, *extra):
    args = ["finetune", "experiment=demo_finetune", "backbone=none", f"data.shards={labelled}", f"run_dir={run}"]
    args += ["trainer.progress_bar=false", "trainer.checkpoint_every_n_steps=2", "trainer.log_every_n_steps=1"]
    return main([*args, "data.batch_size=1", "data.crop_size=[16,16,16]", "sw_batch_size=8", *extra])


def _steps(run) -> list[int]:
    with open(run / "scratch" / "metrics" / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_ctrl_c_checkpoints_the_step_and_the_rerun_resumes_into_one_metrics_file(
    labelled, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    step_loss = voxfm.pretrain.finetune.loop.SegmentationModule.step_loss

    def ctrl_c_at_step_3(self, batch):
        if self.trainer is not None and self.trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return step_loss(self, batch)

    monkeypatch.setattr(voxfm.pretrain.finetune.loop.SegmentationModule, "step_loss", ctrl_c_at_step_3)
    assert _finetune(labelled, run, "steps=8") == 130
    assert "stopped by SIGINT at step 4" in capsys.readouterr().err  # the step it was in, not the last periodic one
    assert find_resume_checkpoint(run / "scratch" / "checkpoints")[1] == 4 and not (run / "results.json").exists()
    monkeypatch.setattr(voxfm.pretrain.finetune.loop.SegmentationModule, "step_loss", step_loss)

    assert _finetune(labelled, run, "steps=6") == 0
    assert "scratch arm resuming from" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["arms"]["scratch"]["steps"] == 6
    steps = _steps(run)
    assert steps == sorted(steps) and steps[-1] == 5 and not list((run / "scratch" / "metrics").glob("version_*"))

    # more steps and another evaluation setting are free; a changed recipe is refused before anything is written
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".voxfm.lock"}
    assert _finetune(labelled, run, "steps=7", "sw_overlap=0.5", "lr=0.01") == 2
    err = capsys.readouterr().err
    assert "lr: 0.003 → 0.01" in err and "nothing was written" in err and "sw_overlap" not in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".voxfm.lock"} == before


def test_unreadable_or_lost_checkpoints_are_refused_not_started_over(labelled, tmp_path, capsys):
    run = tmp_path / "run"
    assert _finetune(labelled, run, "steps=2") == 0
    checkpoints = run / "scratch" / "checkpoints"
    for ckpt in checkpoints.glob("*.ckpt"):
        ckpt.write_bytes(b"not a checkpoint")
    assert _finetune(labelled, run, "steps=4") == 4
    assert "step000002.ckpt" in capsys.readouterr().err
    for ckpt in checkpoints.glob("*.ckpt"):
        ckpt.unlink()
    assert _finetune(labelled, run, "steps=4") == 4
    assert "results.json records arm scratch trained to step 2" in capsys.readouterr().err


def test_a_second_job_and_a_planted_link_are_refused(labelled, tmp_path, capsys):
    run = tmp_path / "run"
    with folder_lock(run, "run_dir"):
        assert _finetune(labelled, run, "steps=2") == 2
    assert "in use by another voxfm job" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("precious\n")
    (run / "config.yaml.tmp").symlink_to(elsewhere)
    assert _finetune(labelled, run, "steps=2") == 0
    assert elsewhere.read_text() == "precious\n" and not (run / "config.yaml").is_symlink()


def test_a_damaged_label_map_is_skipped_with_its_reason(labelled, tmp_path, capsys):
    import io
    import tarfile

    damaged = tmp_path / "shards"
    shutil.copytree(labelled, damaged)
    shard = damaged / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    victim = next(m.name for m, _ in members if m.name.endswith(".label.b2"))
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            data = b"not a label map" if member.name == victim else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    assert _finetune(damaged, tmp_path / "run", "steps=2") == 0
    err = capsys.readouterr().err
    assert f"skipped damaged sample {victim.removesuffix('.label.b2')}" in err and "1 of 3 labelled" in err


def test_a_record_that_cannot_be_read_a_checkpoint_without_its_recipe_or_other_data_are_refused(
    labelled, phantom_dir, tmp_path, capsys
):
    import torch

    run = tmp_path / "run"
    assert _finetune(labelled, run, "steps=2") == 0
    assert not list((run / "scratch" / "checkpoints").glob("*-v*.ckpt"))
    assert _finetune(labelled, run, "steps=4") == 0  # resumed: still no Lightning -vN names
    assert not list((run / "scratch" / "checkpoints").glob("*-v*.ckpt"))

    moved = tmp_path / "moved"  # the same samples elsewhere: the shard set may move
    shutil.copytree(labelled, moved)
    assert _finetune(moved, run, "steps=5") == 0
    other = labelled_shards(phantom_images(phantom_dir)[3:6], tmp_path / "other")  # other samples: another recipe
    capsys.readouterr()
    assert _finetune(other, run, "steps=6") == 2
    assert "data.digest:" in capsys.readouterr().err

    for ckpt in (run / "scratch" / "checkpoints").glob("*.ckpt"):
        stored = torch.load(ckpt, weights_only=True)
        del stored["voxfm_finetune_config"]
        torch.save(stored, ckpt)
    assert _finetune(labelled, run, "steps=6") == 2
    assert "holds no voxfm_finetune_config" in capsys.readouterr().err
    shutil.rmtree(run / "scratch" / "checkpoints")
    (run / "results.json").write_text('{"arms": ')  # cut short
    assert _finetune(labelled, run, "steps=6") == 4
    assert "results.json cannot be read" in capsys.readouterr().err
