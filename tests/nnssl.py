"""Reading a format=nnssl export as nnU-Net reads it (shared by tests/export/test_export_nnssl.py and
test_nnssl_axes.py). nnU-Net's pretrained fine-tuning (`like_nnssl.py`, `pretrainedTrainer.py`,
`get_network_via_name.py`) is on its main branch, not in the installed 2.8.1: `nnunet_network` repeats its dispatch,
and builds everything that is not a preset through 2.8.1's own `get_network_from_plans`."""

import json

import pytest
import torch

from tests.models.reference_primus import reference_primus

# The fields nnssl writes: AbstractTrainer.save_checkpoint less what add_adaptation_plan.py drops (MIC-DKFZ/nnssl
# src/nnssl/training/nnsslTrainer/AbstractTrainer.py, utilities/add_adaptation_plan.py), AdaptationPlan and
# ArchitecturePlans (adaptation_planning/adaptation_plan.py), Plan and ConfigurationPlan
# (experiment_planning/experiment_planners/plan.py), DynamicArchitecturePlans for a ResidualEncoderUNet.
CHECKPOINT = ["network_weights", "init_args", "trainer_name", "nnssl_adaptation_plan"]
ADAPTATION_PLAN = [
    "architecture_plans",
    "pretrain_plan",
    "pretrain_num_input_channels",
    "recommended_downstream_patchsize",
    "key_to_encoder",
    "key_to_stem",
    "keys_to_in_proj",
    "key_to_lpe",
]
ARCHITECTURE_PLANS = ["arch_class_name", "arch_kwargs", "arch_kwargs_requiring_import"]
PLAN = [
    "dataset_name",
    "plans_name",
    "original_median_spacing_after_transp",
    "image_reader_writer",
    "transpose_forward",
    "transpose_backward",
    "configurations",
    "experiment_planner_used",
]
CONFIGURATION_PLAN = [
    "data_identifier",
    "preprocessor_name",
    "spacing_style",
    "normalization_schemes",
    "use_mask_for_norm",
    "resampling_fn_data",
    "resampling_fn_data_kwargs",
    "resampling_fn_mask",
    "resampling_fn_mask_kwargs",
    "spacing",
    "patch_size",
]
DYNAMIC_ARCHITECTURE_PLANS = [
    "n_stages",
    "features_per_stage",
    "conv_op",
    "kernel_sizes",
    "strides",
    "n_blocks_per_stage",
    "n_conv_per_stage_decoder",
    "conv_bias",
    "norm_op",
    "norm_op_kwargs",
    "dropout_op",
    "dropout_op_kwargs",
    "nonlin",
    "nonlin_kwargs",
]
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
        return getattr(primus, name)(
            input_channels=input_channels, output_channels=num_classes, patch_embed_size=(8, 8, 8), input_shape=patch
        )
    if name == "ResEncL":
        return ResidualEncoderUNet(
            input_channels=input_channels,
            n_stages=6,
            features_per_stage=[32, 64, 128, 256, 320, 320],
            conv_op=torch.nn.Conv3d,
            kernel_sizes=[[3, 3, 3] for _ in range(6)],
            strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            n_blocks_per_stage=[1, 3, 4, 6, 6, 6],
            num_classes=num_classes,
            n_conv_per_stage_decoder=[1, 1, 1, 1, 1],
            conv_bias=True,
            norm_op=torch.nn.InstanceNorm3d,
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=torch.nn.LeakyReLU,
            nonlin_kwargs={"inplace": True},
            deep_supervision=False,
        )
    deep_supervision = False if name.endswith("ResidualEncoderUNet") else None  # Primus takes no such argument
    return get_network_from_plans(
        name,
        arch["arch_kwargs"],
        arch["arch_kwargs_requiring_import"] or [],
        input_channels,
        num_classes,
        deep_supervision=deep_supervision,
    )


def load_as_nnunet(net: torch.nn.Module, checkpoint: dict) -> torch.nn.Module:
    """Strictly: the whole of `network_weights`, then stem and encoder by their plan keys into the network's own
    submodules (what nnssl's verify_adaptation_plans checks and nnU-Net's load_pretrained_weights copies)."""
    weights, plan = checkpoint["network_weights"], checkpoint["nnssl_adaptation_plan"]
    net.load_state_dict(weights, strict=True)
    for key, own in ((plan["key_to_encoder"], net.key_to_encoder), (plan["key_to_stem"], net.key_to_stem)):
        part = {k[len(key) + 1 :]: v for k, v in weights.items() if k.startswith(key + ".")}
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
