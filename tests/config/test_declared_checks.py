"""The cross-key checks read objectives' and backbones' declarations and the shape rules of models/rules.py."""

import pytest

from voxfm.pretrain.cli.main import main
from voxfm.pretrain.config.declarations import declared_backbones, read_declared
from voxfm.pretrain.config.schema import _conforms


@pytest.mark.parametrize(
    "experiment,override,expected",
    [
        ("demo", "objective.loss.decoder_hidden=50", "objective.loss.decoder_hidden=50: must be divisible by 6"),
        ("demo_mae_contrastive", "objective.loss.mae.decoder_heads=5", "by objective.loss.mae.decoder_heads=5"),
        ("demo_mim", "model.features_per_stage=32", "model.features_per_stage=32: expected a list of int"),
        ("demo_mim", "objective=mae", "objective=MAEObjective needs a token (ViT-like) backbone"),
    ],
)
def test_a_rule_from_a_declaration_fails_before_anything_is_built(shard_dir, capsys, experiment, override, expected):
    assert main(["pretrain", f"experiment={experiment}", f"data.shards={shard_dir}", "run_dir=/y", override]) == 2
    assert expected in capsys.readouterr().err


def test_declarations_are_read_from_source():
    declared = read_declared("voxfm.pretrain.objectives.simclr.SimCLRObjective")
    assert declared.declaration.views == 2 and not declared.declaration.trains_decoder
    assert set(declared.arguments) == {"proj_hidden", "proj_dim", "temperature"}
    assert read_declared("monai.networks.nets.ViT") is None and read_declared("no.such.Thing") is None
    assert sorted(declared_backbones()) == [
        "voxfm.models.primus.Primus",
        "voxfm.models.resenc.ResEncUNet",
        "voxfm.models.vit.ViT",
    ]
    assert _conforms([8, 16], tuple[int, ...]) and not _conforms(5.0, int | tuple[int, ...])


def test_voxfm_backbones_names_single_file_modules_and_refuses_a_taken_architecture(tmp_path, monkeypatch):
    import sys

    from voxfm.pretrain.config.declarations import backbone_class_for
    from voxfm.pretrain.errors import ConfigError

    (tmp_path / "mybackbone.py").write_text(
        "from voxfm.models.spec import BackboneDeclaration\n\n\nclass Mine:\n"
        "    declaration = BackboneDeclaration(kind='cnn', architecture='vit', export_class='x.Y')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("VOXFM_BACKBONES", "mybackbone")
    declared_backbones.cache_clear()
    try:
        assert "mybackbone.Mine" in declared_backbones()  # a single-file module is found
        with pytest.raises(ConfigError, match="architecture='vit' is declared by both"):
            backbone_class_for("vit")  # it may not take over the ViT's exports
        monkeypatch.setenv("VOXFM_BACKBONES", "no_such_module_here")
        declared_backbones.cache_clear()
        with pytest.raises(ConfigError, match="VOXFM_BACKBONES='no_such_module_here': no module"):
            declared_backbones()
    finally:
        monkeypatch.delenv("VOXFM_BACKBONES")
        declared_backbones.cache_clear()
        sys.modules.pop("mybackbone", None)
