from functools import partial

import pytest
import torch

from tests.objectives.helpers import assert_gradients_reach, overfit, smooth_regions, staged
from voxfm.data.views.masking import RandomPatchMasking
from voxfm.data.views.pipeline import ViewPipeline
from voxfm.models.vit import ViT
from voxfm.pretrain.objectives.mae import MAEObjective
from voxfm.pretrain.objectives.mae_contrastive import MAEContrastiveObjective
from voxfm.pretrain.objectives.simclr import nt_xent


def _setup(mae_weight=1.0, contrastive_weight=0.5):
    torch.manual_seed(0)
    vit = ViT(1, 16, 4, 48, 96, 2, 4)
    mae = partial(MAEObjective, decoder_hidden=48, decoder_layers=1, decoder_heads=4)
    obj = MAEContrastiveObjective(
        vit.spec,
        mae,
        mae_weight=mae_weight,
        contrastive_weight=contrastive_weight,
        proj_hidden=32,
        proj_dim=16,
        temperature=0.1,
    )
    stage = ViewPipeline(16, n_views=2, overlap=0.5, masking=RandomPatchMasking(0.75, patch_size=4))
    return vit, obj, stage, smooth_regions(4, stage.region_size_needed()[0])


def test_loss_is_the_weighted_sum_of_its_parts_and_reuses_mae():
    vit, obj, stage, regions = _setup()
    batch = staged(stage, regions, step=1)
    loss, logs = obj(batch, vit)
    again, _ = obj(staged(stage, regions, step=1), vit)
    assert torch.equal(loss, again)
    mae_only, _ = obj.mae(batch, vit)
    latent, _ = obj.mae.encode_visible(batch, vit)
    contrastive, _ = nt_xent(obj.head(latent.mean(1)), 0.1)
    assert torch.allclose(loss, mae_only + 0.5 * contrastive)
    assert torch.allclose(logs["mae_loss"], mae_only) and torch.allclose(logs["contrastive_loss"], contrastive)
    assert "visible_loss" in logs
    quiet, quiet_logs = obj({**batch, "log_step": False}, vit)  # not a logging step: no diagnostic
    assert torch.equal(quiet, loss) and "visible_loss" not in quiet_logs
    assert set(quiet_logs) == {"loss", "mae_loss", "contrastive_loss", "contrastive_acc"}
    assert_gradients_reach(loss, vit, obj)


@pytest.mark.slow
def test_overfits_one_tiny_batch():
    vit, obj, stage, regions = _setup()
    first, last = overfit(obj, vit, staged(stage, regions), steps=200, lr=3e-3)
    assert last < first / 5, (first, last)


def test_bad_weights_fail_fast():
    with pytest.raises(ValueError, match="contrastive_weight=-1"):
        _setup(contrastive_weight=-1)
