"""A run_dir and an export written by voxfm 0.1 before the `voxfm` package (tests/fixtures/, made by commit
e6fb711, whose configs name `models.vit.ViT`, `pretrain.objectives.mae.MAEObjective`, `data.views.ViewPipeline`)
resume, export and load with today's code: old names are mapped in one place, `pretrain/config/renamed.py`."""

import json
import shutil

import pytest

from tests.conftest import REPO
from voxfm.pretrain.cli.main import main

FIXTURES = REPO / "tests" / "fixtures"
# the settings the fixture was trained with (a 1-layer ViT of width 12, 2 steps of experiment=demo)
TINY = [
    "model.hidden_size=12",
    "model.mlp_dim=24",
    "model.num_layers=1",
    "model.num_heads=2",
    "objective.loss.decoder_hidden=12",
    "objective.loss.decoder_heads=2",
    "trainer.checkpoint_every_n_steps=1",
    "trainer.progress_bar=false",
    "trainer.images_every_n_steps=0",
    "data.num_workers=0",
]


@pytest.mark.slow
def test_a_run_dir_of_the_old_release_resumes(tmp_path, shard_dir, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run_v0_1", run)
    assert "_target_: models.vit.ViT" in (run / "config.yaml").read_text()
    assert (
        main(
            [
                "pretrain",
                "experiment=demo",
                f"data.shards={shard_dir}",
                f"run_dir={run}",
                "trainer.max_steps=4",
                "resume.allow_changes=[data.shards]",
                *TINY,
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "resuming from" in out.out and "at step 2" in out.out and "finished at step 4" in out.out
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][-2:] == ["resume", "end"] and events[-1]["step"] == 4
    # the old class paths name the same classes: what changed is what this command changed on purpose, and the
    # logger group's form (0.1's csv wrote `wandb: null`; csv now sets nothing: logger=[csv,wandb] composes) and
    # the recipe's name, which 0.1 did not record (both free)
    changed = ["data.shards", "experiment_name", "logger", "logger.wandb", "resume.allow_changes", "run_dir"]
    changed += ["trainer.max_steps"]
    assert sorted(events[-2]["changes"]) == changed
    assert "_target_: voxfm.models.vit.ViT" in (run / "config.yaml").read_text()


def test_a_checkpoint_of_the_old_release_exports_the_same_bytes(tmp_path):
    assert main(["export", f"checkpoint={FIXTURES / 'run_v0_1'}", f"output={tmp_path / 'export'}"]) == 0
    old, new = FIXTURES / "export_v0_1", tmp_path / "export"
    assert (new / "backbone.safetensors").read_bytes() == (old / "backbone.safetensors").read_bytes()
    meta = json.loads((new / "backbone.json").read_text())
    assert meta["config"]["model"]["_target_"] == "voxfm.models.vit.ViT"
    assert meta["config"]["objective"]["views"]["_target_"] == "voxfm.data.views.pipeline.ViewPipeline"


def test_an_export_of_the_old_release_loads():
    import torch

    import voxfm
    from voxfm.pretrain.finetune.model import read_export

    backbone = voxfm.load_backbone(FIXTURES / "export_v0_1")
    assert type(backbone.network).__name__ == "ViT" and type(backbone.network).__module__.startswith("monai.")
    assert backbone.preprocessing["spacing"] == [1.5, 1.5, 1.5] and backbone.preprocessing["orientation"] == "RAS"
    out, _ = backbone.network(torch.zeros(1, 1, 32, 32, 32))
    assert out.shape == (1, 64, 12)  # 4³ tokens of width 12
    meta, weights = read_export(str(FIXTURES / "export_v0_1"))  # voxfm finetune's reader
    assert meta["architecture"] == "vit" and set(weights) == set(backbone.network.state_dict())


def test_an_experiment_file_naming_the_old_modules_composes_to_the_new(tmp_path):
    from voxfm.pretrain.cli.compose import load_config

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        "_target_: models.vit.ViT\nin_channels: 1\nimg_size: ${data.crop_size}\npatch_size: 8\n"
    )
    cfg = load_config(
        "pretrain",
        [f"hydra.searchpath=[file://{tmp_path}]", "experiment=demo", "model=mine", "data.shards=x", "run_dir=y"],
    )
    assert cfg.model._target_ == "voxfm.models.vit.ViT"
