import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

from tests.objectives.helpers import (
    TINY_RESENC,
    assert_gradients_reach,
    move_zero_initialised_norms,
    overfit,
    smooth_regions,
    staged,
)
from voxfm.data.views.masking import RandomPatchMasking
from voxfm.data.views.pipeline import ViewPipeline
from voxfm.models.resenc import ResEncUNet, resenc_kwargs
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.launch.run import run_pretrain
from voxfm.pretrain.objectives.mim import MIMObjective, cube_visibility
from voxfm.pretrain.training.checkpoints import load_checkpoint


def _setup():
    torch.manual_seed(0)
    net = ResEncUNet(**TINY_RESENC)
    obj = MIMObjective(net.spec)
    stage = ViewPipeline(16, masking=RandomPatchMasking(0.5, patch_size=4))
    return net, obj, stage, smooth_regions(2, 16)


def test_cube_visibility_upsamples_the_cell_mask():
    mask = torch.tensor([[True, False] + [False] * 6])  # 2 x 2 x 2 cubes of 4³ in an 8³ crop
    visible = cube_visibility(mask, (8, 8, 8))
    assert visible.shape == (1, 1, 8, 8, 8)
    assert visible[0, 0, :4, :4, :4].sum() == 0 and visible[0, 0, :4, :4, 4:].min() == 1
    assert visible.sum() == 7 * 64


def test_objective_is_deterministic_and_trains_every_part():
    net, obj, stage, regions = _setup()
    loss, logs = obj(staged(stage, regions, step=3), net)
    again, _ = obj(staged(stage, regions, step=3), net)
    assert torch.equal(loss, again) and set(logs) == {"loss", "visible_loss"}
    quiet, quiet_logs = obj({**staged(stage, regions, step=3), "log_step": False}, net)
    assert torch.equal(quiet, loss) and set(quiet_logs) == {"loss"}  # the diagnostic only on logging steps
    move_zero_initialised_norms(net)
    loss, _ = obj(staged(stage, regions, step=3), net)
    assert_gradients_reach(loss, net, obj)


def test_loss_ignores_the_prediction_at_visible_voxels():
    net, obj, stage, regions = _setup()
    batch = staged(stage, regions)
    loss, _ = obj(batch, net)
    visible = cube_visibility(batch["mask"], (16, 16, 16))
    original = net.decode
    net.decode = lambda skips: original(skips) + 100.0 * visible
    perturbed, logs = obj(batch, net)
    assert torch.allclose(loss, perturbed, rtol=0, atol=1e-6) and logs["visible_loss"] > 1000


def test_hidden_voxels_do_not_leak_into_visible_features():
    net, obj, stage, regions = _setup()
    batch = staged(stage, regions)
    x, visible = batch["image"], cube_visibility(batch["mask"], (16, 16, 16))
    changed = x + (1 - visible) * torch.randn_like(x) * 10  # only hidden voxels differ
    with torch.no_grad():
        for stage_index in range(3):
            a, b = net.encode(x, visible)[stage_index], net.encode(changed, visible)[stage_index]
            keep = -torch.nn.functional.adaptive_max_pool3d(-visible, a.shape[2:])
            assert torch.equal(a * keep, b * keep), f"stage {stage_index} leaks"
        # without the sparse emulation, visible voxels next to hidden cubes do see them (the test can fail)
        dense_a, dense_b = net.encode(x)[0], net.encode(changed)[0]
        assert not torch.allclose(dense_a * visible, dense_b * visible)


@pytest.mark.slow
def test_overfits_one_tiny_batch():
    net, obj, stage, regions = _setup()
    first, last = overfit(obj, net, staged(stage, regions), steps=200, lr=3e-3)
    assert last < first / 5, (first, last)


@pytest.fixture(scope="module")
def mim_run(tmp_path_factory, shard_dir):
    run = tmp_path_factory.mktemp("mim_run")
    cfg = load_config(
        "pretrain",
        [
            "experiment=demo_mim",
            f"data.shards={shard_dir}",
            f"run_dir={run}",
            "trainer.max_steps=3",
            "trainer.checkpoint_every_n_steps=3",
            "trainer.images_every_n_steps=3",
            "trainer.progress_bar=false",
            "data.num_workers=0",
        ],
    )
    run_pretrain(cfg)
    return run


@pytest.mark.slow
def test_checkpoint_backbone_loads_strictly_into_nnunets_residual_encoder_unet(mim_run):
    ckpt = load_checkpoint(mim_run / "checkpoints" / "last.ckpt")
    model = ckpt["voxfm_config"]["model"]
    preset = {k: model[k] for k in ("features_per_stage", "n_blocks_per_stage", "n_conv_per_stage_decoder")}
    plain = ResidualEncoderUNet(**resenc_kwargs(model["in_channels"], model["out_channels"], **preset))
    state = {k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    assert any(k.startswith("decoder.encoder.") for k in state) and any(".all_modules.0." in k for k in state)
    plain.load_state_dict(state, strict=True)
    assert torch.equal(
        plain.state_dict()["encoder.stem.convs.0.conv.weight"],
        ckpt["state_dict"]["backbone.encoder.stem.convs.0.conv.weight"],
    )


def test_mim_run_writes_reconstruction_pictures(mim_run):
    from PIL import Image

    picture = Image.open(mim_run / "images" / "step000003.png")
    assert picture.mode == "L" and picture.width > picture.height > 0


@pytest.mark.slow
def test_resenc_l_preset_is_nnunets_residual_encoder_unet():
    cfg = load_config("pretrain", ["experiment=mim_resenc_l", "data.shards=/x", "run_dir=/y"])
    from hydra.utils import instantiate

    ours = instantiate(cfg.model)
    plain = ResidualEncoderUNet(
        **resenc_kwargs(1, 1, (32, 64, 128, 256, 320, 320), (1, 3, 4, 6, 6, 6), (1, 1, 1, 1, 1))
    )
    plain.load_state_dict(ours.state_dict(), strict=True)
    assert ours.total_stride == 32 and cfg.objective.views.masking.patch_size == 32
