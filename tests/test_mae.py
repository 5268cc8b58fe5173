import torch

from data.masking import RandomPatchMasking
from data.views import ViewStage
from models.vit import ViT
from pretrain.module import step_generator
from pretrain.objectives.mae import MAEObjective, patchify, unpatchify, visible_ids
from tests.objectives import assert_gradients_reach, overfit, smooth_regions, staged


def test_patchify_follows_the_token_order_of_the_patch_embedding():
    x = torch.arange(2 * 8 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8, 8)
    patches = patchify(x, (4, 4, 4))  # [1, 8, 128]
    assert patches.shape == (1, 8, 128)
    # token n = (i, j, k) in raster order over the 2 x 2 x 2 grid, channel last
    i, j, k = 1, 0, 1
    n = i * 4 + j * 2 + k
    block = x[0, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4, 4 * k:4 * k + 4]  # [C, 4, 4, 4]
    assert torch.equal(patches[0, n], block.permute(1, 2, 3, 0).reshape(-1))
    assert torch.equal(unpatchify(patches, (4, 4, 4), (2, 2, 2), 2), x)


def test_masks_hide_the_same_count_per_sample_and_replay_from_the_seed():
    masking = RandomPatchMasking(0.75, patch_size=4)
    m1 = masking(4, (16, 16, 16), step_generator(torch.device("cpu"), seed=0, step=5, rank=0))
    m2 = masking(4, (16, 16, 16), step_generator(torch.device("cpu"), seed=0, step=5, rank=0))
    m3 = masking(4, (16, 16, 16), step_generator(torch.device("cpu"), seed=0, step=6, rank=0))
    assert m1.dtype == torch.bool and m1.shape == (4, 64)
    assert (m1.sum(1) == 48).all()
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    assert not torch.equal(m1[0], m1[1])  # per sample, not one mask for the batch


def test_visible_ids_are_the_unmasked_positions_in_order():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    assert visible_ids(mask, 2).tolist() == [[1, 3], [0, 1]]


def _setup(norm_pix_loss=True):
    torch.manual_seed(0)
    vit = ViT(1, 16, 4, 48, 96, 2, 4)
    obj = MAEObjective(vit.spec, decoder_hidden=48, decoder_layers=1, decoder_heads=4, norm_pix_loss=norm_pix_loss)
    stage = ViewStage(16, masking=RandomPatchMasking(0.75, patch_size=4))
    return vit, obj, stage, smooth_regions(4, 16)


def test_objective_is_deterministic_given_batch_and_generator_and_trains_every_part():
    vit, obj, stage, regions = _setup()
    loss, logs = obj(staged(stage, regions, step=7), vit)
    again, _ = obj(staged(stage, regions, step=7), vit)
    assert loss.ndim == 0 and torch.equal(loss, again) and set(logs) == {"loss", "visible_loss"}
    # the fixed sin-cos position embeddings are frozen; every other parameter learns
    assert_gradients_reach(loss, vit, obj)


def test_loss_counts_hidden_patches_only():
    """Perturbing the decoder's prediction at visible positions leaves the loss unchanged."""
    vit, obj, stage, regions = _setup()
    batch = staged(stage, regions)
    loss, _ = obj(batch, vit)
    original = obj.decoder.forward

    def perturb_visible(latent, ids_keep):
        pred = original(latent, ids_keep)
        return pred + (~batch["mask"]).unsqueeze(-1).float() * 100.0

    obj.decoder.forward = perturb_visible
    perturbed, logs = obj(batch, vit)
    assert torch.equal(loss, perturbed)
    assert logs["visible_loss"] > 100


def test_overfits_one_tiny_batch():
    vit, obj, stage, regions = _setup()
    first, last = overfit(obj, vit, staged(stage, regions), steps=200, lr=3e-3)
    assert last < first / 5, (first, last)


def test_reconstruction_keeps_visible_patches_and_fills_hidden_ones():
    vit, obj, stage, regions = _setup()
    batch = staged(stage, regions)
    out = obj.reconstruct(batch, vit)
    assert set(out) == {"original", "masked", "reconstruction"}
    hidden = unpatchify(batch["mask"].unsqueeze(-1).float().expand(-1, -1, 64), (4, 4, 4), (4, 4, 4), 1)
    assert torch.equal(out["reconstruction"] * (1 - hidden), out["original"] * (1 - hidden))
    assert torch.equal(out["masked"] * hidden, torch.zeros_like(hidden))
