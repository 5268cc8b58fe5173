"""Adding a backbone is one module and one config: `tests/models/toy/` holds both (network, declaration and adapter
in `toy.py`), and the toy backbone goes through `voxfm pretrain --cfg`, a training step, `export format=full` and
`finetune` with no other file touched; `VOXFM_BACKBONES` lets stored configs and exports name it."""

import json

import pytest

from tests.conftest import REPO
from voxfm.data.ingest.run import run_shard
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.config.declarations import declared_backbones

pytestmark = pytest.mark.slow

TOY = [
    "hydra.searchpath=[file://" + str(REPO / "tests" / "models" / "toy" / "conf") + "]",
    "model=toy",
    "objective=simclr",
    "objective.loss.proj_hidden=16",
    "objective.loss.proj_dim=8",
    "data.crop_size=[16,16,16]",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.regions_per_volume=2",
    "data.shuffle_buffer=4",
    "trainer.progress_bar=false",
    "trainer.images_every_n_steps=0",
]


@pytest.fixture
def toy_backbones(monkeypatch):
    monkeypatch.setenv("VOXFM_BACKBONES", "tests.models.toy.toy")
    declared_backbones.cache_clear()
    yield
    monkeypatch.delenv("VOXFM_BACKBONES")
    declared_backbones.cache_clear()


def test_a_toy_backbone_composes_and_its_rules_are_checked(shard_dir, toy_backbones, capsys):
    base = ["pretrain", f"data.shards={shard_dir}", "run_dir=/unused", *TOY]
    assert main([*base, "--cfg"]) == 0
    assert "_target_: tests.models.toy.toy.ToyBackbone" in capsys.readouterr().out
    assert main([*base, "data.crop_size=[15,15,15]"]) == 2  # its declared shape rule: two stages, an even crop
    assert "must be divisible by the UNet's total stride 2" in capsys.readouterr().err
    mae = [a for a in base if not a.startswith(("objective", "data.crop_size"))]
    assert main([*mae, "objective=mae"]) == 2  # a CNN: masked autoencoding needs tokens, said in one line
    assert (
        "MAEObjective needs a token (ViT-like) backbone, got model._target_=tests.models.toy.toy.ToyBackbone"
        in capsys.readouterr().err
    )


def test_a_toy_backbone_trains_exports_and_finetunes(shard_dir, phantom_dir, toy_backbones, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", f"data.shards={shard_dir}", f"run_dir={run}", "trainer.max_steps=1", *TOY]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert main(["export", f"checkpoint={run}", f"output={tmp_path / 'monai'}"]) == 2  # it declares format=full only
    assert "format=monai: tests.models.toy.toy.ToyBackbone exports as full" in capsys.readouterr().err
    assert main(["export", f"checkpoint={run}", f"output={tmp_path / 'full'}", "format=full"]) == 0
    meta = json.loads((tmp_path / "full" / "full.json").read_text())
    assert meta["architecture"] == "toy" and "A test backbone" in (tmp_path / "full" / "README.md").read_text()

    rows = ["path,label"] + [
        f"{p},{str(p).replace('.nii.gz', '_label.nii.gz')}" for p in sorted(phantom_dir.glob("phantom*_??.nii.gz"))
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    run_shard(str(tmp_path / "m.csv"), str(tmp_path / "labelled"), {}, progress=False)
    assert (
        main(
            [
                "finetune",
                "experiment=demo_finetune",
                f"backbone={tmp_path / 'full'}",
                f"data.shards={tmp_path / 'labelled'}",
                f"run_dir={tmp_path / 'ft'}",
                "steps=2",
                "data.crop_size=[16,16,16]",
                "data.batch_size=1",
                "trainer.progress_bar=false",
                "sw_batch_size=8",
                "freeze_encoder=true",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["arms"]["pretrained"]["architecture"] == "toy" and results["arms"]["pretrained"]["steps"] == 2


def test_without_voxfm_backbones_a_stored_toy_config_is_refused(tmp_path):
    from voxfm.pretrain.errors import ConfigError
    from voxfm.pretrain.training.checkpoints import backbone_arguments

    declared_backbones.cache_clear()
    with pytest.raises(ConfigError, match="refused; a stored config may only name voxfm's backbones"):
        backbone_arguments({"_target_": "tests.models.toy.toy.ToyBackbone"}, "checkpoint: voxfm_config.model")
