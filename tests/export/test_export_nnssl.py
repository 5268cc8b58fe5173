"""format=nnssl: the file nnssl writes, read as nnU-Net reads it. nnU-Net's network is built from the adaptation plan
(a preset by name, else class + kwargs), loads `network_weights` strictly and computes voxfm's function on nnU-Net's
axis order: for Primus, whose RoPE and position embeddings depend on it, on a non-cubic grid with and without
register tokens, and with sharp attention (a missing RoPE block swap is caught).

nnU-Net's pretrained fine-tuning (`like_nnssl.py`, `pretrainedTrainer.py`, `get_network_via_name.py`) is on its main
branch, not in the installed 2.8.1: `nnunet_network` repeats its dispatch, and builds everything that is not a preset
through 2.8.1's own `get_network_from_plans`."""

import json

import pytest
import torch

from tests.exports import model_card_snippet, voxfm_encoder
from tests.models.reference_primus import reference_primus
from voxfm.models.adapters.primus import PrimusAdapter
from voxfm.models.primus import PRESETS, Primus
from voxfm.models.resenc import ResEncUNet
from voxfm.pretrain.export.formats import backbone_weights
from voxfm.pretrain.export.nnssl import nnssl_checkpoint
from voxfm.pretrain.export.run import run_export

# The fields nnssl writes: AbstractTrainer.save_checkpoint less what add_adaptation_plan.py drops (MIC-DKFZ/nnssl
# src/nnssl/training/nnsslTrainer/AbstractTrainer.py, utilities/add_adaptation_plan.py), AdaptationPlan and
# ArchitecturePlans (adaptation_planning/adaptation_plan.py), Plan and ConfigurationPlan
# (experiment_planning/experiment_planners/plan.py), DynamicArchitecturePlans for a ResidualEncoderUNet.
CHECKPOINT = ["network_weights", "init_args", "trainer_name", "nnssl_adaptation_plan"]
ADAPTATION_PLAN = ["architecture_plans", "pretrain_plan", "pretrain_num_input_channels",
                   "recommended_downstream_patchsize", "key_to_encoder", "key_to_stem", "keys_to_in_proj", "key_to_lpe"]
ARCHITECTURE_PLANS = ["arch_class_name", "arch_kwargs", "arch_kwargs_requiring_import"]
PLAN = ["dataset_name", "plans_name", "original_median_spacing_after_transp", "image_reader_writer",
        "transpose_forward", "transpose_backward", "configurations", "experiment_planner_used"]
CONFIGURATION_PLAN = ["data_identifier", "preprocessor_name", "spacing_style", "normalization_schemes",
                      "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_mask",
                      "resampling_fn_mask_kwargs", "spacing", "patch_size"]
DYNAMIC_ARCHITECTURE_PLANS = ["n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides",
                              "n_blocks_per_stage", "n_conv_per_stage_decoder", "conv_bias", "norm_op",
                              "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs"]
NNSSL_ARGS = {"drop_path_rate": 0.2, "init_values": 0.1, "scale_attn_inner": True}


def nnunet_network(plan: dict, input_channels: int, num_classes: int) -> torch.nn.Module:
    """The network `nnUNetv2_train_pretrained` builds from a checkpoint's adaptation plan (PretrainedTrainer's
    build_network_architecture with the patch size like_nnssl sets: recommended_downstream_patchsize)."""
    pytest.importorskip("nnunetv2")
    reference_primus()  # timm importable: nnU-Net's Primus, and nnU-Net's search for a bare class name, need it
    import dynamic_network_architectures.architectures.primus as primus
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch, patch = plan["architecture_plans"], plan["recommended_downstream_patchsize"]
    name = arch["arch_class_name"]
    if name in ("PrimusS", "PrimusB", "PrimusM", "PrimusL"):  # get_network_from_name
        return getattr(primus, name)(input_channels=input_channels, output_channels=num_classes,
                                     patch_embed_size=(8, 8, 8), input_shape=patch)
    if name == "ResEncL":
        return ResidualEncoderUNet(
            input_channels=input_channels, n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320],
            conv_op=torch.nn.Conv3d, kernel_sizes=[[3, 3, 3] for _ in range(6)],
            strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            n_blocks_per_stage=[1, 3, 4, 6, 6, 6], num_classes=num_classes, n_conv_per_stage_decoder=[1, 1, 1, 1, 1],
            conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    deep_supervision = False if name.endswith("ResidualEncoderUNet") else None  # Primus takes no such argument
    return get_network_from_plans(name, arch["arch_kwargs"], arch["arch_kwargs_requiring_import"] or [],
                                  input_channels, num_classes, deep_supervision=deep_supervision)


def load_as_nnunet(net: torch.nn.Module, checkpoint: dict) -> torch.nn.Module:
    """Strictly: the whole of `network_weights`, then stem and encoder by their plan keys into the network's own
    submodules (what nnssl's verify_adaptation_plans checks and nnU-Net's load_pretrained_weights copies)."""
    weights, plan = checkpoint["network_weights"], checkpoint["nnssl_adaptation_plan"]
    net.load_state_dict(weights, strict=True)
    for key, own in ((plan["key_to_encoder"], net.key_to_encoder), (plan["key_to_stem"], net.key_to_stem)):
        part = {k[len(key) + 1:]: v for k, v in weights.items() if k.startswith(key + ".")}
        net.get_submodule(own).load_state_dict(part, strict=True)
    if plan["key_to_lpe"]:
        assert net.get_parameter(net.key_to_lpe).shape == weights[plan["key_to_lpe"]].shape
    return net.eval()


def same_function(ours: torch.nn.Module, theirs: torch.nn.Module, shape) -> float:
    """max |voxfm(x) − nnU-Net(x in nnU-Net's axis order), back in voxfm's| for x: [1, C, X, Y, Z]."""
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (theirs(x.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2) - ours(x)).abs().max().item()


def read_as_nnunet(out) -> dict:
    """checkpoint_final.pth as nnU-Net loads it, checked to hold exactly nnssl's fields; like_nnssl's pretrain_info."""
    checkpoint = torch.load(out / "checkpoint_final.pth", weights_only=True)
    plan = checkpoint["nnssl_adaptation_plan"]
    assert list(checkpoint) == CHECKPOINT and list(plan) == ADAPTATION_PLAN
    assert list(plan["architecture_plans"]) == ARCHITECTURE_PLANS and list(plan["pretrain_plan"]) == PLAN
    (config,) = plan["pretrain_plan"]["configurations"].values()
    assert list(config) == CONFIGURATION_PLAN
    shipped = json.loads((out / "adaptation_plan.json").read_text())
    assert shipped == {**plan, "trainer_name": checkpoint["trainer_name"]}
    assert plan["recommended_downstream_patchsize"] == config["patch_size"]  # no position-embedding resize
    assert config["spacing"] == [1.5, 1.5, 1.5] and checkpoint["init_args"]["step"] == 2
    assert (out / "backbone.safetensors").exists()  # beside it, voxfm's axis order: what voxfm finetune reads
    return checkpoint


@pytest.mark.slow
def test_nnssl_file_of_demo_primus_builds_nnunets_primus_and_gives_voxfms_output(primus_run, tmp_path, monkeypatch):
    out = run_export(str(primus_run), str(tmp_path / "nnssl"), export_format="nnssl")
    checkpoint = read_as_nnunet(out)
    plan = checkpoint["nnssl_adaptation_plan"]
    arch = plan["architecture_plans"]
    assert arch["arch_class_name"] == Primus.declaration.export_class  # not a preset
    assert arch["arch_kwargs_requiring_import"] == []
    assert (plan["key_to_encoder"], plan["key_to_stem"], plan["keys_to_in_proj"], plan["key_to_lpe"]) == (
        "eva", "down_projection", ["down_projection.proj"], "eva.pos_embed")
    assert checkpoint["trainer_name"] == "voxfm.MAEObjective" and plan["pretrain_num_input_channels"] == 1
    net = load_as_nnunet(nnunet_network(plan, 1, 1), checkpoint)  # primus_tiny: 1 input channel, 1 output
    assert same_function(voxfm_encoder(primus_run / "checkpoints" / "last.ckpt"), net, (32, 32, 32)) < 1e-4
    card = (out / "README.md").read_text()
    assert "-tr PretrainedTrainer_Primus" in card and "refuses without a trainer of your own" in card
    monkeypatch.chdir(out)
    exec(model_card_snippet(out), {})  # noqa: S102 - the README's own lines


@pytest.mark.slow
def test_nnssl_file_of_demo_mim_builds_nnunets_resenc_from_its_kwargs_and_gives_voxfms_output(mim_run, tmp_path,
                                                                                               monkeypatch):
    out = run_export(str(mim_run), str(tmp_path / "nnssl"), export_format="nnssl")
    checkpoint = read_as_nnunet(out)
    plan = checkpoint["nnssl_adaptation_plan"]
    arch = plan["architecture_plans"]
    assert arch["arch_class_name"] == "ResidualEncoderUNet" and list(arch["arch_kwargs"]) == DYNAMIC_ARCHITECTURE_PLANS
    assert arch["arch_kwargs_requiring_import"] == ["conv_op", "norm_op", "nonlin"]
    assert (plan["key_to_encoder"], plan["key_to_stem"], plan["key_to_lpe"]) == ("encoder.stages", "encoder.stem", None)
    assert plan["recommended_downstream_patchsize"] == [32, 32, 32]  # demo_mim's crop
    net = load_as_nnunet(nnunet_network(plan, 1, 1), checkpoint)
    assert same_function(voxfm_encoder(mim_run / "checkpoints" / "last.ckpt"), net, (16, 20, 24)) < 1e-5
    assert "nnUNetv2_train_pretrained <ID> 3d_fullres <fold> -p" in (out / "README.md").read_text()
    monkeypatch.chdir(out)
    exec(model_card_snippet(out), {})  # noqa: S102


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
    ours = _sharp_primus(input_channels=1, embed_dim=48, patch_embed_size=8, num_classes=2, eva_depth=2,
                         eva_numheads=4, input_shape=(32, 24, 16), num_register_tokens=registers, **NNSSL_ARGS)
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
        "arch_class_name": "ResEncL", "arch_kwargs": None, "arch_kwargs_requiring_import": None}
    net = load_as_nnunet(nnunet_network(checkpoint["nnssl_adaptation_plan"], 1, 1), checkpoint)
    assert same_function(resenc, net, (64, 32, 32)) < 1e-4
    depth, heads, dim = PRESETS["M"]
    primus = _sharp_primus(input_channels=1, embed_dim=dim, patch_embed_size=8, num_classes=1, eva_depth=depth,
                           eva_numheads=heads, input_shape=(16, 16, 24), **NNSSL_ARGS)
    checkpoint = _nnssl(primus, (16, 16, 24))
    assert checkpoint["nnssl_adaptation_plan"]["architecture_plans"]["arch_class_name"] == "PrimusM"
    net = load_as_nnunet(nnunet_network(checkpoint["nnssl_adaptation_plan"], 1, 1), checkpoint)
    assert same_function(primus, net, (16, 16, 24)) < 1e-4


def test_only_networks_equal_to_a_preset_take_its_name():
    m = {"embed_dim": 864, "eva_depth": 16, "eva_numheads": 12, "patch_embed_size": [8, 8, 8], "input_shape": [64] * 3,
         "num_register_tokens": 0, "use_rot_pos_emb": True, "use_abs_pos_embed": True, "mlp_ratio": 4 * 2 / 3,
         "drop_path_rate": 0.0, "proj_drop_rate": 0.0, "attn_drop_rate": 0.0, "init_values": 0.1,
         "scale_attn_inner": True, "input_channels": 1, "num_classes": 1}
    assert PrimusAdapter.nnssl_plans(m)["arch_class_name"] == "PrimusM"
    assert PrimusAdapter.nnssl_plans({**m, "embed_dim": 396, "eva_numheads": 6, "eva_depth": 12}
                              )["arch_class_name"] == "PrimusS"
    for change in ({"num_register_tokens": 2}, {"patch_embed_size": [16, 16, 16]}, {"init_values": None},
                   {"scale_attn_inner": False}, {"eva_depth": 12}):
        plans = PrimusAdapter.nnssl_plans({**m, **change})
        assert plans["arch_class_name"] == Primus.declaration.export_class
        assert plans["arch_kwargs"] == {k: v for k, v in {**m, **change}.items()
                                        if k not in ("input_channels", "num_classes")}
