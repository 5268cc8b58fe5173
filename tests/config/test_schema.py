"""Configuration checked before launch: each kind of mistake fails fast, naming the key, value and what is allowed."""

import dataclasses
import importlib
import inspect
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO
from voxfm.pretrain.cli.compose import CONF_DIR, load_config
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.config.checks import combination_errors
from voxfm.pretrain.config.schema import TARGETS, PretrainSchema, check_node, validate_pretrain

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_schemas_name_exactly_the_constructor_arguments(target):
    module, name = target.rsplit(".", 1)
    params = set(inspect.signature(getattr(importlib.import_module(module), name)).parameters) - {"self", "spec"}
    fields = {f.name for f in dataclasses.fields(TARGETS[target])}
    if target.startswith("torch.optim"):
        assert fields <= params
    else:
        assert fields == params


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_is_valid(experiment, shard_dir):
    cfg = load_config("pretrain", [f"experiment={experiment}", f"data.shards={shard_dir}", "run_dir=/y"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert check_node(resolved, PretrainSchema, "") == []
    assert combination_errors(resolved, gpus=0) == []
    validate_pretrain(resolved)


BAD = [  # (overrides, text the one-line error must contain)
    (["trainer.max_steps=ten"], "trainer.max_steps='ten': expected int"),
    (["trainer.max_stepz=10"], "trainer.max_stepz: unknown key; did you mean trainer.max_steps?"),
    (["+model.hiden_size=3"], "model.hiden_size: unknown key; did you mean model.hidden_size?"),
    (["data.foreground_prob=1.5"], "data.foreground_prob=1.5: expected a value <= 1.0"),
    (["objective.views.masking.mask_ratio=0"], "objective.views.masking.mask_ratio=0: expected a value > 0.0"),
    (["data.loader=fork"], "data.loader='fork': expected one of 'thread', 'process'"),
    (["data.shards=/nowhere/at/all"], "data.shards=/nowhere/at/all: 1 of 1 shard(s) not found"),
    (["model.patch_size=7"], "must be divisible by model.patch_size=7"),
    (["trainer.devices=4096"], "trainer.devices=4096: only"),
    (["strategy=fsdp"], "Available options in 'strategy'"),
    (["strategy.name=fsdp"], "strategy.name='fsdp': expected one of 'auto', 'ddp', 'ddp_spawn', 'deepspeed'"),
    (["strategy=deepspeed_zero3", "strategy.stage=4"], "strategy.stage=4: expected a value <= 3"),
    (
        ["strategy=deepspeed_zero2", "strategy.stage=1", "strategy.offload_optimizer=true"],
        "strategy.offload_optimizer=true: needs ZeRO stage 2 or 3",
    ),
    (["objective.views.n_views=1"], "objective.views.n_views=1: SimCLRObjective needs 2"),
    (["strategy=ddp_spawn"], "ResEnc blocks cannot be pickled"),
    (["data.region_size=[32,32,32]"], "data.region_size=[32, 32, 32]: too small for 2 view(s)"),
    (["model=nope"], "Available options in 'model'"),
    (["trainer.compile_mode=max-autotune"], "trainer.compile_mode=max-autotune: GPU only"),
    (["trainer.compile_mode=reduce-overhead"], "trainer.compile_mode=reduce-overhead: GPU only"),
    (["trainer.fp8=true"], "trainer.fp8=true: FP8 linears need an H100-class GPU"),
    (
        ["trainer.checkpoint_every_n_steps=300", "trainer.keep_every_n_steps=1000"],
        "trainer.keep_every_n_steps=1000: milestones are kept from the checkpoints written every",
    ),
]


@pytest.mark.parametrize("overrides,expected", BAD)
def test_a_bad_setting_fails_with_one_line_naming_it(overrides, expected, shard_dir, capsys):
    experiment = "demo_simclr" if any(k in overrides[0] for k in ("n_views", "ddp_spawn", "region_size")) else "demo"
    assert main(["pretrain", f"experiment={experiment}", f"data.shards={shard_dir}", "run_dir=/y", *overrides]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    "experiment,overrides,expected",
    [
        ("demo_mim", ["strategy=deepspeed_zero2", "trainer.precision=bf16-mixed"], "with DeepSpeed on a CPU"),
        ("demo_mim", ["trainer.precision=bf16-true"], "ResEnc's pooled shortcuts"),
        (
            "demo_dino_gram",
            ["trainer.precision=bf16-true", "objective.loss.gram.teacher_scale=2"],
            "the Gram teacher's pooled features",
        ),
    ],
)
def test_bf16_weights_on_a_cpu_are_refused_where_something_would_pool_in_bf16(
    experiment, overrides, expected, shard_dir, capsys
):
    """PyTorch has no bf16 `avg_pool3d` on the CPU: a run would fail at its first step. The ViT runs of DeepSpeed's
    bf16 (tests/training/test_deepspeed.py) and autocast's bf16-mixed pool nothing in bf16 and are not refused."""
    args = [f"experiment={experiment}", f"data.shards={shard_dir}", "run_dir=/y", "trainer.accelerator=cpu"]
    assert main(["pretrain", *args, *overrides]) == 2
    err = capsys.readouterr().err
    assert expected in err and "pool in bf16, which PyTorch has no CPU kernel for" in err and len(err.splitlines()) == 1


def test_validation_happens_before_torch_or_lightning_is_imported(shard_dir):
    args = ["pretrain", "experiment=demo", f"data.shards={shard_dir}", "run_dir=/y", "trainer.max_steps=ten"]
    code = (
        f"import sys; from voxfm.pretrain.cli.main import main; rc = main({args!r}); "
        "print(rc, 'torch' in sys.modules, 'lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.split() == ["2", "False", "False"], out.stdout + out.stderr
