"""Adding an objective is one module and one config: `tests/objectives/toy/` holds both, and the toy objective
goes through `voxfm pretrain --cfg`, the config checks, a training step and export with no other file touched."""

import json

import pytest

from tests.conftest import REPO
from voxfm.pretrain.cli.main import main

TOY = [
    "hydra.searchpath=[file://" + str(REPO / "tests" / "objectives" / "toy" / "conf") + "]",
    "objective=toy",
    "model=vit_tiny",
    "data.crop_size=[32,32,32]",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.regions_per_volume=2",
    "data.shuffle_buffer=4",
    "trainer.progress_bar=false",
    "trainer.images_every_n_steps=0",
]


pytestmark = pytest.mark.slow


def test_a_toy_objective_composes_and_its_keys_are_checked(shard_dir, capsys):
    base = ["pretrain", f"data.shards={shard_dir}", "run_dir=/unused", *TOY]
    assert main([*base, "--cfg"]) == 0
    assert "_target_: tests.objectives.toy.toy.ToyObjective" in capsys.readouterr().out
    assert main([*base, "+objective.loss.widht=3"]) == 2
    assert "objective.loss.widht: unknown key; did you mean objective.loss.width?" in capsys.readouterr().err
    assert main([*base, "objective.loss.width=0"]) == 2
    assert "objective.loss.width=0: expected a value >= 1" in capsys.readouterr().err
    assert main([*base, "objective.views.n_views=2"]) == 2
    assert "objective.views.n_views=2: ToyObjective needs 1" in capsys.readouterr().err


def test_a_toy_objective_trains_a_step_and_exports(shard_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", f"data.shards={shard_dir}", f"run_dir={run}", "trainer.max_steps=1", *TOY]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert main(["export", f"checkpoint={run}", f"output={tmp_path / 'monai'}"]) == 0
    meta = json.loads((tmp_path / "monai" / "backbone.json").read_text())
    assert meta["objective"] == "ToyObjective" and meta["class"] == "monai.networks.nets.ViT"
    assert main(["export", f"checkpoint={run}", f"output={tmp_path / 'full'}", "format=full"]) == 0
    assert (tmp_path / "full" / "model.safetensors").is_file()
