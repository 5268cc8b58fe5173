"""objective=distill: a frozen teacher from a format=full export of a DINO run, a smaller student that learns its
targets. The teacher takes no gradient, never changes and is never saved; two students learn in one pass and each
exports with its model card; a teacher on another token grid is refused in one line."""

import csv
import json

import pytest
import torch
from omegaconf import OmegaConf

from tests.exports import model_card_snippet
from tests.objectives.helpers import smooth_regions, staged
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.errors import ConfigError
from voxfm.pretrain.launch.build import build_module

TEACHER = ["model.hidden_size=24", "model.mlp_dim=96"]  # not vit_tiny's 48: exports tell them apart
FAST = ["trainer.progress_bar=false", "trainer.images_every_n_steps=0", "data.num_workers=0"]


@pytest.fixture(scope="module")
def teacher(shard_dir, tmp_path_factory):
    """A demo_dino run of 2 steps (a ViT 24 wide) exported format=full: the teacher of every test here."""
    run, out = tmp_path_factory.mktemp("dino_run"), tmp_path_factory.mktemp("dino_full") / "export"
    args = ["pretrain", "experiment=demo_dino", f"data.shards={shard_dir}", f"run_dir={run}", "trainer.max_steps=2"]
    assert main([*args, *TEACHER, *FAST, "data.batch_size=2", "objective.views.n_local=1"]) == 0
    assert main(["export", f"checkpoint={run}", f"output={out}", "format=full"]) == 0
    return out


def _distill(teacher, shard_dir, run, *extra) -> list[str]:
    return ["pretrain", "experiment=demo_distill", f"objective.loss.teacher={teacher}", f"data.shards={shard_dir}",
            f"run_dir={run}", *FAST, *extra]  # fmt: skip


def test_the_teacher_takes_no_gradient_never_changes_and_is_never_saved(teacher, shard_dir):
    module = build_module(load_config("pretrain", _distill(teacher, shard_dir, "/y")[1:]))
    objective = module.objective
    before = {k: v.clone() for k, v in objective.teacher.state_dict().items()}
    student = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    optimizer = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in objective.teacher.parameters()}
    assert {id(p) for p in objective.head.parameters()} <= optimised  # the student's heads are new and trained
    module.train()
    assert not objective.teacher.training and not any(p.requires_grad for p in objective.teacher.parameters())
    for step in range(3):
        loss, logs = module.objective(staged(module.view_pipeline, smooth_regions(2, 40), step), module.backbone)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in objective.teacher.parameters())
        assert {"dino_loss", "ibot_loss", "koleo", "teacher_entropy"} <= set(logs)
        optimizer.step()
    after = objective.teacher.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(student[k], v) for k, v in module.backbone.state_dict().items())  # the student moved
    state = module.state_dict()
    assert not any(k.startswith("objective.teacher.") for k in state) and "objective.head.last_layer.weight" in state
    fresh = build_module(load_config("pretrain", _distill(teacher, shard_dir, "/y")[1:]))
    fresh.load_state_dict(state, strict=True)  # a checkpoint without the teacher loads strictly: it is read again


SMALL = ["+model@objective.loss.students.small=vit_tiny", "objective.loss.students.small.hidden_size=36",
         "objective.loss.students.small.mlp_dim=72", "+objective.loss.students.small.class_token=true"]  # fmt: skip


@pytest.mark.slow
def test_two_students_learn_in_one_pass_and_each_exports_with_its_model_card(teacher, shard_dir, tmp_path, monkeypatch):
    run = tmp_path / "distill"
    steps = ["trainer.max_steps=100", "trainer.log_every_n_steps=1", "data.batch_size=2"]
    assert main(_distill(teacher, shard_dir, run, *steps, *SMALL, "objective.views.n_local=0")) == 0  # ~50 s
    with open(run / "metrics" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(rows) == 100
    for key in ("train/dino_loss", "train/small/dino_loss"):  # `model` (vit_tiny, 48 wide) and `small` (36 wide)
        losses = [float(r[key]) for r in rows]
        first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
        assert last < first - 0.1, (key, first, last)
    total = [float(r["train/loss"]) - float(r["train/small/loss"]) for r in rows[:3]]
    assert all(t > 0 for t in total)  # the loss is both students'

    from safetensors.torch import load_file

    from voxfm.pretrain.training.checkpoints import load_checkpoint

    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert not any(k.startswith("objective.teacher.") for k in state)
    for student, width, prefix in ((None, 48, "backbone."), ("small", 36, "objective.students.small.backbone.")):
        out = tmp_path / f"export_{student}"
        assert main(["export", f"checkpoint={run}", f"output={out}", *([f"student={student}"] if student else [])]) == 0
        meta = json.loads((out / "backbone.json").read_text())
        assert meta["kwargs"]["hidden_size"] == width and meta["objective"] == "DistillObjective"
        assert meta.get("student") == student
        exported = load_file(str(out / "backbone.safetensors"))
        assert torch.equal(exported["blocks.0.attn.qkv.weight"], state[prefix + "blocks.0.attn.qkv.weight"])
        monkeypatch.chdir(out)
        scope: dict = {}
        exec(model_card_snippet(out), scope)  # noqa: S102 - the card's own lines, as a user would paste them
        assert scope["net"].eval()(torch.zeros(1, 1, 32, 32, 32))[0].shape == (1, 64, width)
    assert main(["export", f"checkpoint={run}", f"output={tmp_path / 'x'}", "student=large"]) == 2


def test_a_teacher_on_another_token_grid_is_refused_in_one_line(teacher, shard_dir, capsys):
    assert main(_distill(teacher, shard_dir, "/y", "model.patch_size=16")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "token grid" in err and "4×4×4 tokens" in err and "2×2×2 tokens" in err, err


def test_an_export_without_an_ema_teacher_is_refused(teacher, shard_dir, tmp_path, capsys):
    full = json.loads((teacher / "full.json").read_text())
    full["config"]["objective"]["loss"]["_target_"] = "voxfm.pretrain.objectives.mae.MAEObjective"
    fake = tmp_path / "mae_full"
    fake.mkdir()
    (fake / "full.json").write_text(json.dumps(full))
    (fake / "model.safetensors").symlink_to(teacher / "model.safetensors")
    assert main(_distill(fake, shard_dir, "/y")) == 2
    assert "keeps no EMA teacher" in capsys.readouterr().err
    assert OmegaConf.missing_keys(load_config("pretrain", ["experiment=demo_distill"])) >= {"objective.loss.teacher"}


def test_the_gpu_recipe_distils_a_dino_vit_b_teacher_into_a_vit_s_on_its_token_grid(shard_dir):
    from voxfm.pretrain.cli.compose import checked_config, resolved

    cfg = resolved(checked_config("pretrain", ["experiment=distill_vit_s", f"data.shards={shard_dir}", "run_dir=/y",
                                               "objective.loss.teacher=/teacher"]))  # fmt: skip
    dino = resolved(load_config("pretrain", ["experiment=dino_vit_b", "data.shards=/x", "run_dir=/y"]))
    assert cfg["model"]["hidden_size"] == 384 and cfg["objective"]["views"]["masking"] is None
    for key in ("data.crop_size", "model.patch_size"):  # the teacher's token grid
        group, name = key.split(".")
        assert cfg[group][name] == dino[group][name], key


def test_other_students_are_optimised_with_layer_decay_and_must_share_its_depth(teacher, shard_dir):
    args = _distill(teacher, shard_dir, "/y", *SMALL, "optim.layer_decay=0.5")[1:]
    module = build_module(load_config("pretrain", args))
    small = module.objective.students["small"]
    groups = module.configure_optimizers()["optimizer"].param_groups
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert {id(p) for p in small.parameters() if p.requires_grad} <= set(lr_of)  # its backbone and heads learn
    first, last = small.backbone.repeated_blocks()[0], small.backbone.repeated_blocks()[-1]
    assert lr_of[id(next(first.parameters()))] < lr_of[id(next(last.parameters()))]  # decayed by depth, as `model`
    with pytest.raises(ConfigError, match=r"the students have \[2, 3\] blocks"):  # before any run writes
        build_module(load_config("pretrain", [*args, "objective.loss.students.small.num_layers=3"]))


def test_a_student_that_is_no_model_config_is_refused_before_anything_is_built(teacher, shard_dir, capsys):
    typo = [*SMALL, "+objective.loss.students.small.hiden_size=8", "+objective.loss.students.junk.x=1"]
    assert main(_distill(teacher, shard_dir, "/y", *typo)) == 2
    err = capsys.readouterr().err
    assert "objective.loss.students.junk=" in err and "expected a node with a _target_" in err
    assert "objective.loss.students.small.hiden_size: unknown key" in err  # still checked beside the junk
