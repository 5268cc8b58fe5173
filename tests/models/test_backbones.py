"""Every declared backbone keeps its kind's contract (`models/protocols.py`) and has an adapter that keeps its own:
the export's weights load back into the family's segmenter, and the formats it declares have what they need."""

import pytest
import torch
from hydra.utils import instantiate

from voxfm.models.protocols import BackboneAdapter, CNNBackbone, NNUNetAdapter, TokenBackbone
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.config.declarations import backbone_class_for, declared_backbones
from voxfm.pretrain.errors import ConfigError

# a small config of each declared backbone (the ViT's has 12 layers, as UNETR, its segmenter, builds)
TINY = {
    "voxfm.models.vit.ViT": "vit_s",
    "voxfm.models.primus.Primus": "primus_tiny",
    "voxfm.models.resenc.ResEncUNet": "resenc_tiny",
}
KINDS = {"tokens": TokenBackbone, "cnn": CNNBackbone}


def test_every_declared_backbone_has_a_tiny_config_here():
    assert set(declared_backbones()) == set(TINY)


@pytest.mark.parametrize("target", sorted(TINY))
def test_a_backbone_keeps_its_contract_and_its_adapter_round_trips_its_export(target):
    declared = declared_backbones()[target]
    token = declared.declaration.token_size  # 16: UNETR, the ViT's segmenter, takes patch-16 ViTs only
    cfg = load_config(
        "pretrain",
        [
            f"model={TINY[target]}",
            "data.crop_size=[32,32,32]",
            "data.shards=/x",
            "run_dir=/y",
            *([f"model.{token}=16"] if token else []),
        ],
    )
    backbone = instantiate(cfg.model)
    assert isinstance(backbone, KINDS[declared.declaration.kind]), (target, declared.declaration.kind)
    adapter = type(backbone).adapter
    assert isinstance(adapter, BackboneAdapter) and adapter.architecture == declared.declaration.architecture
    assert backbone_class_for(adapter.architecture) is type(backbone)
    if {"nnunet", "nnssl"} & set(declared.declaration.formats):
        assert isinstance(adapter, NNUNetAdapter)
    weights, description = adapter.export_weights(backbone.state_dict(), backbone, None)
    assert description["architecture"] == adapter.architecture and isinstance(description["kwargs"], dict)
    net = adapter.segmenter(description["kwargs"], 3, [32, 32, 32], {"feature_size": 16})
    adapter.load_pretrained(net, weights, target)
    trained = {id(p) for p in adapter.encoder_parameters(net)}
    assert trained and trained <= {id(p) for p in net.parameters()}
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 32, 32, 32)).shape[:2] == (1, 3)
    assert isinstance(adapter.card_notes({"config": {"model": {}}, "class": "x"}, "full"), list)


def test_an_unknown_architecture_is_an_error_never_a_fallback():
    with pytest.raises(ConfigError, match="architecture='swin': no declared backbone has it"):
        backbone_class_for("swin")
