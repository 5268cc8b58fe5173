import pytest
import torch

from tests.objectives.helpers import assert_gradients_reach, overfit, smooth_regions, staged
from voxfm.data.views.counter_random import step_key
from voxfm.data.views.masking import RandomPatchMasking
from voxfm.data.views.pipeline import ViewPipeline
from voxfm.models.vit import ViT
from voxfm.pretrain.objectives.mae import (
    MAEObjective,
    patch_error,
    patch_target,
    patchify,
    patchify_at,
    unpatchify,
    visible_ids,
)


def test_patchify_follows_the_token_order_of_the_patch_embedding():
    x = torch.arange(2 * 8 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8, 8)
    patches = patchify(x, (4, 4, 4))  # [1, 8, 128]
    assert patches.shape == (1, 8, 128)
    # token n = (i, j, k) in raster order over the 2 x 2 x 2 grid, channel last
    i, j, k = 1, 0, 1
    n = i * 4 + j * 2 + k
    block = x[0, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4, 4 * k : 4 * k + 4]  # [C, 4, 4, 4]
    assert torch.equal(patches[0, n], block.permute(1, 2, 3, 0).reshape(-1))
    assert torch.equal(unpatchify(patches, (4, 4, 4), (2, 2, 2), 2), x)


def test_masks_hide_the_same_count_per_sample_and_replay_from_the_seed():
    masking = RandomPatchMasking(0.75, patch_size=4)
    m1 = masking(4, (16, 16, 16), step_key(torch.device("cpu"), seed=0, step=5, rank=0))
    m2 = masking(4, (16, 16, 16), step_key(torch.device("cpu"), seed=0, step=5, rank=0))
    m3 = masking(4, (16, 16, 16), step_key(torch.device("cpu"), seed=0, step=6, rank=0))
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
    stage = ViewPipeline(16, masking=RandomPatchMasking(0.75, patch_size=4))
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
    original = obj.decoder.predict

    def perturb_visible(tokens):  # the decoder's rows come visible first, then hidden (or the hidden alone)
        pred = original(tokens)
        n_visible = pred.shape[1] - int(batch["mask"][0].sum())
        return pred + (torch.arange(pred.shape[1]) < n_visible).unsqueeze(-1).float() * 100.0

    obj.decoder.predict = perturb_visible
    perturbed, logs = obj(batch, vit)
    assert torch.equal(loss, perturbed)
    assert logs["visible_loss"] > 100


def test_patchify_at_picks_the_patches_of_patchify():
    x = torch.randn(2, 2, 8, 12, 4)
    ids = torch.tensor([[5, 0, 11], [1, 2, 3]])
    every = patchify(x, (4, 4, 2))  # [2, 12, 64]
    assert torch.equal(patchify_at(x, (4, 4, 2), ids), every.gather(1, ids.unsqueeze(-1).expand(-1, -1, 64)))


def _reference_loss(obj: MAEObjective, vit: ViT, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss before it was restricted to hidden tokens: the decoder predicts every patch, the prediction is
    copied to fp32, every patch is patchified, the error is taken everywhere and masked → (loss, visible_loss)."""
    mask, d = batch["mask"], obj.decoder
    ids_keep = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, : batch["n_visible"]]
    visible = d.proj(vit.encode(vit.embed(batch["image"], ids_keep)))
    b, _, c = visible.shape
    tokens = d.mask_token.expand(b, d.n_tokens, c).scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, c), visible)
    tokens = tokens + d.position_embeddings
    for block in d.blocks:
        tokens = block(tokens)
    pred = d.pred(d.norm(tokens)).float()
    target = patchify(batch["image"].float(), obj.patch_size)
    if obj.norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)
    hidden = mask.float()
    return (per_patch * hidden).sum() / hidden.sum(), (per_patch * (1 - hidden)).sum() / (1 - hidden).sum()


def _hand_made_batch(b: int = 4, size: int = 16, patch: int = 4, n_masked: int = 48) -> dict:
    """Smooth volumes and a per-row random mask hiding `n_masked` of the (size / patch)³ patches of each row."""
    n = (size // patch) ** 3
    noise = torch.rand(b, n, generator=torch.Generator().manual_seed(1))
    mask = noise.argsort(1).argsort(1) < n_masked
    return {"image": smooth_regions(b, size)["region"], "mask": mask, "n_visible": n - n_masked}


def _grads(loss: torch.Tensor, *modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    params = {f"{i}.{k}": p for i, m in enumerate(modules) for k, p in m.named_parameters() if p.requires_grad}
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_on_hidden_tokens_alone_equals_the_loss_over_every_token(norm_pix_loss):
    vit, obj, _, _ = _setup(norm_pix_loss)
    batch = _hand_made_batch()
    loss, logs = obj(batch, vit)
    ref_loss, ref_visible = _reference_loss(obj, vit, batch)
    assert (loss - ref_loss).abs() < 1e-5 and (logs["visible_loss"] - ref_visible).abs() < 1e-5
    grads, ref_grads = _grads(loss, vit, obj), _grads(ref_loss, vit, obj)
    assert grads.keys() == ref_grads.keys()
    assert all(torch.allclose(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6) for k in grads)
    quiet, quiet_logs = obj({**batch, "log_step": False}, vit)
    assert torch.equal(quiet, loss) and set(quiet_logs) == {"loss"}  # the diagnostic only on logging steps


def test_decoder_keeps_the_autocast_dtype():
    vit, obj, _, _ = _setup()
    batch = _hand_made_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latent, ids = obj.encode_visible(batch, vit)
        tokens = obj.decoder.mix(latent, ids)
        hidden = obj.decoder.mix(latent, ids, hidden_only=True)
        loss, _ = obj(batch, vit)
    assert latent.dtype == tokens.dtype == hidden.dtype == torch.bfloat16
    assert tokens.shape == (4, 64, 48) and hidden.shape == (4, 48, 48)
    assert loss.dtype == torch.float32  # the error itself is taken in fp32


def test_the_patch_error_keeps_no_target_and_its_gradient_is_autograds_through_the_fp32_target():
    """`patch_error` computes the target again in its backward instead of keeping it: nothing target-sized is saved
    beyond the prediction and the image the step has anyway, and the loss and gradient equal autograd's through
    the fp32 target."""
    _, obj, _, _ = _setup()
    batch = _hand_made_batch()
    ids = torch.arange(64).repeat(4, 1)[:, 16:]
    pred = torch.randn(4, 48, 64, generator=torch.Generator().manual_seed(2)).bfloat16().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = patch_error(batch["image"], pred, ids, obj.patch_size, norm_pix=True)
    assert {t.data_ptr() for t in saved} == {pred.data_ptr(), batch["image"].data_ptr(), ids.data_ptr()}
    target = patch_target(batch["image"], obj.patch_size, ids, norm_pix=True).flatten(2)
    reference = (pred.float() - target).pow(2).mean()
    assert torch.allclose(loss, reference, rtol=1e-6, atol=0)
    (grad,), (ref_grad,) = torch.autograd.grad(loss, pred), torch.autograd.grad(reference, pred)
    assert grad.dtype == torch.bfloat16 and torch.allclose(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-9)
    assert torch.allclose(target.mean(-1), torch.zeros(4, 48), atol=1e-5)  # standardised per patch


def test_fp16_views_leave_the_bf16_step_loss_and_gradients_within_rounding():
    """A half-precision step's views come in fp16 (`view_dtype`): the patch embedding rounds the image to bf16 under
    autocast anyway, so only the target moves, by the image's fp16 rounding. The loss and every gradient stay within
    tolerance of the same step on the fp32 image."""
    vit, obj, stage, regions = _setup()
    batch = staged(stage, regions, step=3)
    results = []
    for image in (batch["image"], batch["image"].half()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = obj({**batch, "image": image, "log_step": False}, vit)
        results.append((loss, _grads(loss, vit, obj)))
    (loss, grads), (half_loss, half_grads) = results
    assert abs(float((half_loss - loss).detach())) < 1e-2 * float(loss.detach())
    assert all((half_grads[k] - grads[k]).abs().max() < 2e-2 * grads[k].abs().max() for k in grads)


def test_fp16_views_keep_a_low_contrast_patch_target_where_bf16_would_not():
    """Soft tissue in a CT window of 2000 HU: patches a few HU apart. The per-patch standardised target divides the
    image's rounding by the patch's spread: from fp16 views (about 1 HU steps there) it stays within a few percent
    of the fp32 target, from bf16 views (8 HU steps) it would be mostly rounding noise."""
    _, obj, _, _ = _setup()
    hu = 40 + torch.randint(-5, 6, (2, 1, 16, 16, 16), generator=torch.Generator().manual_seed(0))
    stage = ViewPipeline(16, flip_prob=0.0, rotate_prob=0.0, masking=RandomPatchMasking(0.75, patch_size=4))
    batch = {"region": hu.to(torch.int16), "low": torch.full((2,), -1000.0), "high": torch.full((2,), 1000.0)}
    ids = torch.arange(64).repeat(2, 1)

    def target(dtype: torch.dtype) -> torch.Tensor:
        image = stage(batch, step_key(torch.device("cpu"), 0, 0, 0), dtype=dtype)["image"]
        return patch_target(image, obj.patch_size, ids, norm_pix=True).flatten(2)

    exact = target(torch.float32)
    error = {dtype: float((target(dtype) - exact).pow(2).mean().sqrt()) for dtype in (torch.float16, torch.bfloat16)}
    assert error[torch.float16] < 0.05 < 0.3 < error[torch.bfloat16], error


@pytest.mark.parametrize("log_step", [True, False])
def test_objective_forward_compiles_without_graph_breaks(log_step):
    vit, obj, _, _ = _setup()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(obj)({**_hand_made_batch(), "log_step": log_step}, vit)
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons


@pytest.mark.slow
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
