"""SimCLR: NT-Xent maths, determinism, gradient reach, overfitting, and global negatives over 2 processes."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.objectives.helpers import (
    TINY_RESENC,
    assert_gradients_reach,
    move_zero_initialised_norms,
    overfit,
    smooth_regions,
    staged,
)
from voxfm.data.views.pipeline import ViewPipeline
from voxfm.models.resenc import ResEncUNet
from voxfm.models.vit import ViT
from voxfm.pretrain.objectives.simclr import SimCLRObjective, nt_xent


def _backbone(kind: str):
    torch.manual_seed(0)
    return ResEncUNet(**TINY_RESENC) if kind == "resenc" else ViT(1, 16, 4, 48, 96, 2, 4)


def _setup(kind="resenc", b=4):
    backbone = _backbone(kind)
    obj = SimCLRObjective(backbone.spec, proj_hidden=32, proj_dim=16, temperature=0.1)
    stage = ViewPipeline(16, n_views=2, overlap=0.5)
    return backbone, obj, stage, smooth_regions(b, stage.region_size_needed()[0])


def test_nt_xent_matches_the_formula():
    z = torch.randn(6, 8)
    loss, _ = nt_xent(z, temperature=0.5)
    zn = torch.nn.functional.normalize(z, dim=-1)
    sim = zn @ zn.T / 0.5
    expected = 0.0
    for i in range(6):
        pos = (i + 3) % 6
        others = [sim[i, j] for j in range(6) if j != i]
        expected += -sim[i, pos] + torch.logsumexp(torch.stack(others), 0)
    assert torch.allclose(loss, expected / 6, atol=1e-6)
    identical = torch.cat([torch.eye(3, 8), torch.eye(3, 8)])  # views agree, samples orthogonal
    assert nt_xent(identical, 0.05)[0] < 1e-6 and nt_xent(identical, 0.05)[1] == 1.0


@pytest.mark.parametrize("kind", ["resenc", "vit"])
def test_objective_is_deterministic_and_trains_encoder_and_head(kind):
    backbone, obj, stage, regions = _setup(kind)
    loss, logs = obj(staged(stage, regions, step=2), backbone)
    again, _ = obj(staged(stage, regions, step=2), backbone)
    assert torch.equal(loss, again) and set(logs) == {"loss", "contrastive_acc"}
    assert 0 < loss.item() < 2 * math.log(7)
    if kind == "resenc":
        move_zero_initialised_norms(backbone)
        loss, _ = obj(staged(stage, regions, step=2), backbone)
        assert_gradients_reach(loss, backbone.encoder, obj)  # the decoder is not part of a contrastive loss
    else:
        assert_gradients_reach(loss, backbone, obj)


@pytest.mark.slow
def test_overfits_one_tiny_batch():
    backbone, obj, stage, regions = _setup("resenc")
    first, last = overfit(obj, backbone, staged(stage, regions), steps=200, lr=1e-3)
    assert last < first / 5, (first, last)


def _rank_main(rank: int, world: int, init_file: str, out: str, batch: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    backbone, obj, _, _ = _setup("resenc")
    b = batch["image"].shape[0] // 2 // world
    views = batch["image"].view(2, -1, *batch["image"].shape[1:])[:, rank * b : (rank + 1) * b]
    local = {"image": views.reshape(2 * b, *views.shape[2:]), "n_views": 2}
    loss, _ = obj(local, backbone)
    loss.backward()
    params = [p for p in list(backbone.parameters()) + list(obj.parameters()) if p.grad is not None]
    for p in params:  # what DDP does: average gradients over ranks
        dist.all_reduce(p.grad)
        p.grad /= world
    dist.all_reduce(loss.detach_())
    if rank == 0:
        torch.save({"loss": loss / world, "grads": [p.grad for p in params]}, out)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    backbone, obj, stage, regions = _setup("resenc", b=4)
    batch = staged(stage, regions)
    loss, _ = obj(batch, backbone)
    loss.backward()
    expected = [p.grad for p in list(backbone.parameters()) + list(obj.parameters()) if p.grad is not None]

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(out), {"image": batch["image"]}), nprocs=2)
    got = torch.load(out, weights_only=True)
    assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
    assert len(got["grads"]) == len(expected) > 0
    for g, e in zip(got["grads"], expected):
        assert torch.allclose(g, e, atol=1e-5)


def test_one_view_is_refused():
    backbone, obj, _, _ = _setup()
    with pytest.raises(ValueError, match="n_views=2"):
        obj({"image": torch.zeros(2, 1, 16, 16, 16), "n_views": 1}, backbone)
