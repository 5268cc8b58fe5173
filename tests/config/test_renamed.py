"""Renamed keys and classes keep their old names for one release, with a one-line notice."""

from omegaconf import OmegaConf

from voxfm.data.views.pipeline import ViewPipeline, ViewStage
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.config.renamed import renamed_override, upgraded


def test_an_old_override_is_read_under_its_new_name(capsys):
    cfg = load_config(
        "pretrain", ["experiment=demo_simclr", "data.shards=x", "run_dir=y", "objective.stage.overlap=0.75"]
    )
    assert cfg.objective.views.overlap == 0.75 and "stage" not in cfg.objective
    assert "`objective.stage` is now `objective.views`" in capsys.readouterr().err
    assert renamed_override("+objective.stage.foo=1") == "+objective.views.foo=1"
    assert renamed_override("objective.stages=1") == "objective.stages=1"


def test_an_old_experiment_file_is_read_under_the_new_name_and_the_command_line_still_wins(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "old.yaml").write_text(
        "# @package _global_\nobjective:\n  stage:\n    _target_: data.views.ViewStage\n    flip_prob: 0.25\n"
        "    masking:\n      mask_ratio: 0.5\n"
    )
    base = [f"hydra.searchpath=[file://{tmp_path}]", "experiment=old", "data.shards=x", "run_dir=y"]
    views = OmegaConf.to_container(load_config("pretrain", base).objective.views)
    assert views["flip_prob"] == 0.25 and views["_target_"] == "voxfm.data.views.pipeline.ViewPipeline"
    assert "augment" in views
    assert views["masking"]["mask_ratio"] == 0.5
    for override in ("objective.views.masking.mask_ratio=0.9", "objective.stage.masking.mask_ratio=0.9"):
        assert load_config("pretrain", [*base, override]).objective.views.masking.mask_ratio == 0.9


def test_a_stored_config_of_the_old_release_upgrades():
    old = {
        "objective": {"loss": {"_target_": "x.Y"}, "stage": {"_target_": "data.views.ViewStage", "n_views": 2}},
        "seed": 0,
    }
    views = {"_target_": "voxfm.data.views.pipeline.ViewPipeline", "n_views": 2}
    assert upgraded(old) == {"objective": {"loss": {"_target_": "x.Y"}, "views": views}, "seed": 0}
    assert ViewStage is ViewPipeline


def test_only_the_old_releases_own_modules_are_renamed():
    from voxfm.pretrain.config.renamed import renamed_target

    assert renamed_target("models.vit.ViT") == "voxfm.models.vit.ViT"
    assert renamed_target("pretrain.objectives.dino.objective.DINOObjective") == (
        "voxfm.pretrain.objectives.dino.objective.DINOObjective"
    )
    assert renamed_target("data.masking.RandomPatchMasking") == "voxfm.data.views.masking.RandomPatchMasking"
    for users_own in ("models.mynet.MyNet", "data.myaug.MyAug", "pretrain.mine.Thing", "torch.optim.AdamW"):
        assert renamed_target(users_own) == users_own  # a project's own `models` package keeps its names
