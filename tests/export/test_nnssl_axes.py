"""format=nnssl in nnU-Net's axis order: nnU-Net's network, built from the adaptation plan, computes voxfm's function
on [C, Z, Y, X]; for Primus, whose RoPE and position embeddings depend on the axis order, on a non-cubic grid with
and without register tokens and with sharp attention (a missing RoPE block swap is caught); and presets go by
nnssl's names only when the network equals one."""

import pytest
import torch

from tests.nnssl import NNSSL_ARGS, load_as_nnunet, nnunet_network, same_function
from voxfm.models.adapters.primus import PrimusAdapter
from voxfm.models.primus import PRESETS, Primus
from voxfm.models.resenc import ResEncUNet
from voxfm.pretrain.export.formats import backbone_weights
from voxfm.pretrain.export.nnssl import nnssl_checkpoint


def _sharp_primus(**kwargs) -> Primus:
    """A Primus whose attention is sharp (at initialisation q·k ≈ 0 makes it uniform, blind to RoPE and order)."""
    torch.manual_seed(0)
    net = Primus(**kwargs).eval()
    with torch.no_grad():
        for block in net.eva.blocks:
            block.attn.q_proj.weight.mul_(20)
            block.attn.k_proj.weight.mul_(20)
    return net


def _nnssl(backbone, crop) -> dict:
    weights, description = backbone_weights(backbone)
    return nnssl_checkpoint(type(backbone).adapter, weights, description, list(crop), [1.5, 1.5, 1.5], None, "test", {})


@pytest.mark.slow
@pytest.mark.parametrize("registers", [0, 2])
def test_primus_in_nnunets_axis_order_computes_voxfms_function_on_a_non_cubic_grid(registers):
    ours = _sharp_primus(
        input_channels=1,
        embed_dim=48,
        patch_embed_size=8,
        num_classes=2,
        eva_depth=2,
        eva_numheads=4,
        input_shape=(32, 24, 16),
        num_register_tokens=registers,
        **NNSSL_ARGS,
    )
    checkpoint = _nnssl(ours, (32, 24, 16))
    assert checkpoint["nnssl_adaptation_plan"]["recommended_downstream_patchsize"] == [16, 24, 32]
    theirs = load_as_nnunet(nnunet_network(checkpoint["nnssl_adaptation_plan"], 1, 2), checkpoint)
    assert same_function(ours, theirs, (32, 24, 16)) < 1e-4
    # undo the RoPE block swap (its own inverse; 4 heads of 12 = 3 blocks of 4): nnU-Net's output is then wrong
    swap = torch.cat([torch.arange(8, 12), torch.arange(4, 8), torch.arange(4)])
    rows = (torch.arange(4).unsqueeze(1) * 12 + swap).flatten()
    with torch.no_grad():
        for block in theirs.eva.blocks:
            block.attn.q_proj.weight.copy_(block.attn.q_proj.weight[rows])
            block.attn.q_proj.bias.copy_(block.attn.q_proj.bias[rows])
            block.attn.k_proj.weight.copy_(block.attn.k_proj.weight[rows])
    assert same_function(ours, theirs, (32, 24, 16)) > 1e-2


@pytest.mark.slow
def test_presets_go_by_nnssls_names_and_load_into_nnunets_presets():
    resenc = ResEncUNet().eval()  # voxfm's default ResEnc is ResEnc-L
    checkpoint = _nnssl(resenc, (64, 32, 32))
    assert checkpoint["nnssl_adaptation_plan"]["architecture_plans"] == {
        "arch_class_name": "ResEncL",
        "arch_kwargs": None,
        "arch_kwargs_requiring_import": None,
    }
    net = load_as_nnunet(nnunet_network(checkpoint["nnssl_adaptation_plan"], 1, 1), checkpoint)
    assert same_function(resenc, net, (64, 32, 32)) < 1e-4
    depth, heads, dim = PRESETS["M"]
    primus = _sharp_primus(
        input_channels=1,
        embed_dim=dim,
        patch_embed_size=8,
        num_classes=1,
        eva_depth=depth,
        eva_numheads=heads,
        input_shape=(16, 16, 24),
        **NNSSL_ARGS,
    )
    checkpoint = _nnssl(primus, (16, 16, 24))
    assert checkpoint["nnssl_adaptation_plan"]["architecture_plans"]["arch_class_name"] == "PrimusM"
    net = load_as_nnunet(nnunet_network(checkpoint["nnssl_adaptation_plan"], 1, 1), checkpoint)
    assert same_function(primus, net, (16, 16, 24)) < 1e-4


def test_only_networks_equal_to_a_preset_take_its_name():
    m = {
        "embed_dim": 864,
        "eva_depth": 16,
        "eva_numheads": 12,
        "patch_embed_size": [8, 8, 8],
        "input_shape": [64] * 3,
        "num_register_tokens": 0,
        "use_rot_pos_emb": True,
        "use_abs_pos_embed": True,
        "mlp_ratio": 4 * 2 / 3,
        "drop_path_rate": 0.0,
        "proj_drop_rate": 0.0,
        "attn_drop_rate": 0.0,
        "init_values": 0.1,
        "scale_attn_inner": True,
        "input_channels": 1,
        "num_classes": 1,
    }
    assert PrimusAdapter.nnssl_plans(m)["arch_class_name"] == "PrimusM"
    assert (
        PrimusAdapter.nnssl_plans({**m, "embed_dim": 396, "eva_numheads": 6, "eva_depth": 12})["arch_class_name"]
        == "PrimusS"
    )
    for change in (
        {"num_register_tokens": 2},
        {"patch_embed_size": [16, 16, 16]},
        {"init_values": None},
        {"scale_attn_inner": False},
        {"eva_depth": 12},
    ):
        plans = PrimusAdapter.nnssl_plans({**m, **change})
        assert plans["arch_class_name"] == Primus.declaration.export_class
        assert plans["arch_kwargs"] == {
            k: v for k, v in {**m, **change}.items() if k not in ("input_channels", "num_classes")
        }
