import torch

from models.vit import ViT
from pretrain.masking import RandomPatchMasking
from pretrain.module import mask_generator
from pretrain.objectives.mae import MAEObjective, patchify


def test_patchify_follows_the_token_order_of_the_patch_embedding():
    x = torch.arange(2 * 8 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8, 8)
    patches = patchify(x, (4, 4, 4))  # [1, 8, 128]
    assert patches.shape == (1, 8, 128)
    # token n = (i, j, k) in raster order over the 2 x 2 x 2 grid, channel last
    i, j, k = 1, 0, 1
    n = i * 4 + j * 2 + k
    block = x[0, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4, 4 * k:4 * k + 4]  # [C, 4, 4, 4]
    assert torch.equal(patches[0, n], block.permute(1, 2, 3, 0).reshape(-1))


def test_masks_hide_the_same_count_per_sample_and_replay_from_the_seed():
    masking = RandomPatchMasking(0.75)
    m1 = masking(4, 64, mask_generator(torch.device("cpu"), seed=0, step=5, rank=0))
    m2 = masking(4, 64, mask_generator(torch.device("cpu"), seed=0, step=5, rank=0))
    m3 = masking(4, 64, mask_generator(torch.device("cpu"), seed=0, step=6, rank=0))
    assert m1.dtype == torch.bool and m1.shape == (4, 64)
    assert (m1.sum(1) == 48).all()
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    assert not torch.equal(m1[0], m1[1])  # per sample, not one mask for the batch


def _setup():
    torch.manual_seed(0)
    vit = ViT(1, 16, 4, 48, 96, 1, 4)
    obj = MAEObjective(48, 1, vit.patch_size, vit.grid, decoder_hidden=24, decoder_layers=1, decoder_heads=4)
    x = torch.rand(2, 1, 16, 16, 16)
    mask = RandomPatchMasking(0.5)(2, 64, mask_generator(torch.device("cpu"), 0, 0, 0))
    return vit, obj, {"image": x, "mask": mask}


def test_objective_is_deterministic_and_trains_encoder_and_decoder():
    vit, obj, batch = _setup()
    loss, logs = obj(batch, vit)
    again, _ = obj(batch, vit)
    assert loss.ndim == 0 and torch.equal(loss, again) and set(logs) == {"loss", "visible_loss"}
    loss.backward()
    assert vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert obj.decoder.pred.weight.grad.abs().sum() > 0


def test_loss_counts_hidden_patches_only():
    """The loss is computed on hidden patches only, so
    perturbing the decoder prediction on visible positions leaves it unchanged."""
    vit, obj, batch = _setup()
    loss, _ = obj(batch, vit)
    mask = batch["mask"]
    original = obj.decoder.forward

    def perturb_visible(latent, m):
        pred = original(latent, m)
        return pred + (~m).unsqueeze(-1).float() * 100.0

    obj.decoder.forward = perturb_visible
    perturbed, logs = obj(batch, vit)
    assert torch.allclose(loss, perturbed)
    assert logs["visible_loss"] > 100
    assert mask.sum() == 64
