"""Every config in conf/ composes, and every experiment instantiates its module."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from voxfm.pretrain.cli.compose import CONF_DIR, load_config, missing_keys
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.launch.build import build_module

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_experiments_listed():
    assert {
        "demo",
        "mae_vit_b",
        "mae_primus_m",
        "mim_resenc_l",
        "simclr_resenc_l",
        "mae_contrastive_vit_b",
        "demo_mim",
        "demo_simclr",
        "demo_mae_contrastive",
    } <= set(EXPERIMENTS)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment):
    cfg = load_config("pretrain", [f"experiment={experiment}", "data.shards=/x", "run_dir=/y"])
    if "objective.loss.teacher" in missing_keys(cfg):  # distillation: the teacher is the user's own export
        assert missing_keys(cfg) == ["objective.loss.teacher"]  # its builds: tests/objectives/test_distill.py
        return
    assert missing_keys(cfg) == []
    module = build_module(cfg)  # at the experiment's real size
    stage = module.view_pipeline
    assert stage.crop_size == tuple(cfg.data.crop_size)
    masking = cfg.objective.views.masking
    if masking is not None and "mask_ratio" in masking:
        assert stage.masking.mask_ratio == masking.mask_ratio
    if masking is not None and "ratio_range" in masking:  # iBOT's block masks
        assert stage.masking.ratio_range == tuple(masking.ratio_range)
    if hasattr(module.backbone, "grid"):
        assert list(module.backbone.grid) == [c // p for c, p in zip(cfg.data.crop_size, module.backbone.patch_size)]
    n_params = sum(p.numel() for p in module.backbone.parameters())
    expected = {  # millions of backbone parameters
        "mae_vit_b": (85, 90),
        "mae_contrastive_vit_b": (85, 90),
        "mae_primus_m": (140, 160),
        "mim_resenc_l": (100, 105),
        "simclr_resenc_l": (100, 105),
        "dino_vit_b": (85, 90),
        "dino_primus_m": (140, 160),
    }
    if experiment in expected:
        low, high = expected[experiment]
        assert low * 1e6 < n_params < high * 1e6, n_params
    if experiment == "mae_vit_b":
        assert module.backbone.patch_size == (16, 16, 16) and list(cfg.data.crop_size) == [96, 96, 96]
        assert stage.masking.mask_ratio == 0.75
    if experiment == "mae_primus_m":
        assert module.backbone.patch_size == (8, 8, 8) and module.backbone.grid == (20, 20, 20)
    if experiment.startswith("dino_"):  # 2 global 96³ + 8 local 48³ crops, a class token, 65,536 prototypes each
        local = (64, 64, 64) if experiment.endswith("_hires") else (48, 48, 48)  # the stage at 160³ global crops
        assert stage.n_views == 2 and stage.n_local == 8 and stage.local_size == local
        assert module.backbone.pooled is not None and module.objective.head.last_layer.weight.shape[0] == 65536
        assert module.objective.teacher_backbone is not None
    if experiment == "dino_vit_b":
        assert module.backbone.cls_token is not None
    if experiment == "dino_primus_m":
        assert module.backbone.register_tokens is not None and stage.masking.patch_size == (8, 8, 8)
    if "simclr" in experiment or "contrastive" in experiment:
        assert stage.n_views == 2
    if experiment.startswith("simclr"):  # the UNet decoder is frozen: no unused trainable parameter under DDP
        assert not any(p.requires_grad for p in module.backbone.decoder.stages.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("group", ["model", "logger", "objective", "optim", "trainer", "strategy", "data"])
def test_every_group_option_composes(group):
    for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
        cfg = load_config("pretrain", [f"{group}={option}", "data.shards=/x", "run_dir=/y"])
        assert group in cfg
        if group == "model":
            model = instantiate(cfg.model, img_size=[32, 32, 32]) if "img_size" in cfg.model else instantiate(cfg.model)
            assert model.spec.feature_dim > 0


@pytest.mark.parametrize("name", ["shard", "export", "bench/data"])
def test_command_configs_compose_and_name_their_required_keys(name):
    assert missing_keys(load_config(name, [])) != []


def test_cli_help_and_errors(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("shard", "pretrain", "export", "bench", "demo", "mae_vit_b", "demo_mim"))
    assert main(["frobnicate"]) == 2
    assert main(["shard", "input=/nowhere"]) == 2
    assert "missing required setting(s): output=..." in capsys.readouterr().err
    assert main(["bench"]) == 2
    assert main(["pretrain", "experiment=nope", "data.shards=/x", "run_dir=/y"]) == 2
    assert "experiment" in capsys.readouterr().err
    assert main(["pretrain", "experiment=demo", "data.shards=/x", "run_dir=/y", "model.patch_size=7"]) == 2
    assert "must be divisible by model.patch_size=7" in capsys.readouterr().err


def test_conf_dir_is_the_repository_conf():
    assert CONF_DIR == Path(__file__).resolve().parents[2] / "conf"


MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
OBJECTIVES = sorted(p.stem for p in (CONF_DIR / "objective").glob("*.yaml"))


def test_every_model_objective_pair_composes_and_resolves_or_is_refused_in_one_line(shard_dir, capsys):
    from voxfm.pretrain.cli.compose import checked_config, resolved
    from voxfm.pretrain.errors import ConfigError

    outcomes = {}
    for model in MODELS:
        for objective in OBJECTIVES:
            args = [f"model={model}", f"objective={objective}", f"data.shards={shard_dir}", "run_dir=/y"]
            args += ["objective.loss.teacher=/teacher"] if objective == "distill" else []  # read when built
            try:
                cfg = resolved(checked_config("pretrain", args))
            except ConfigError as err:
                assert "\n" not in str(err) and "needs" in str(err), (model, objective, str(err))
                outcomes[model, objective] = "refused"
                continue
            masking = cfg["objective"]["views"]["masking"]
            if masking is not None:  # the mask cell follows the backbone: one cell per token
                token = cfg["model"].get("patch_size", cfg["model"].get("patch_embed_size"))
                assert masking["patch_size"] == (token if objective != "mim" else 32), (model, objective)
            outcomes[model, objective] = "ok"
    refused = sorted(pair for pair, outcome in outcomes.items() if outcome == "refused")
    assert refused == sorted(
        [(m, "mim") for m in MODELS if not m.startswith("resenc")]
        + [(m, o) for m in MODELS if m.startswith("resenc") for o in ("dino", "distill", "mae", "mae_contrastive")]
    )
    assert len(outcomes) == len(MODELS) * len(OBJECTIVES) == 60


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vit_tiny", "primus_tiny", "resenc_tiny"])
def test_every_pair_a_tiny_backbone_composes_into_builds(model, shard_dir):
    from voxfm.pretrain.cli.compose import checked_config
    from voxfm.pretrain.errors import ConfigError

    built = 0
    for objective in OBJECTIVES:
        args = [
            f"model={model}",
            f"objective={objective}",
            f"data.shards={shard_dir}",
            "run_dir=/y",
            "data.crop_size=[64,64,64]",
        ]  # 8 of mim's 32³ cells
        try:
            cfg = checked_config("pretrain", args)
        except ConfigError:
            continue
        module = build_module(cfg)
        assert module.view_pipeline.crop_size == (64, 64, 64)
        built += 1
    assert built == (2 if model == "resenc_tiny" else 4), built


def test_cfg_prints_the_config_resolved(shard_dir, capsys):
    assert (
        main(
            [
                "pretrain",
                "model=primus_tiny",
                "objective=mae",
                f"data.shards={shard_dir}",
                "run_dir=/y",
                "data.crop_size=[32,32,32]",
                "--cfg",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "${" not in out and "patch_size: 8" in out and "img_size" not in out
    assert (
        main(["pretrain", "experiment=demo", f"data.shards={shard_dir}", "run_dir=/y", "+x=${nowhere}", "--cfg"]) == 2
    )
    captured = capsys.readouterr()
    assert "x: ${nowhere}" in captured.out and "--cfg printed the config unresolved" in captured.err
