"""objective=dino over 2 processes (gloo) equals 1 process on the concatenated batch: the DINO and iBOT losses, the
gradients of every student parameter (averaged over the ranks, as DDP averages them) and the centres, with centred
or Sinkhorn-Knopp targets. KoLeo is per rank by design (DINOv2's), so it is weighted 0 here."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from voxfm.models.vit import ViT
from voxfm.pretrain.objectives.dino.objective import DINOObjective

B, LOCAL = 4, 2  # regions in the global batch, local crops per region


def _model(targets: str):
    torch.manual_seed(0)
    backbone = ViT(img_size=16, patch_size=4, hidden_size=24, mlp_dim=32, num_layers=2, num_heads=2, class_token=True)
    objective = DINOObjective(
        backbone.spec,
        out_dim=32,
        hidden_dim=16,
        bottleneck_dim=8,
        koleo_weight=0.0,
        teacher_warmup_steps=10,
        targets=targets,
    )
    objective.attach_teacher(backbone)
    with torch.no_grad():  # a student that has moved from its teacher, as after some steps
        for p in [*backbone.parameters(), *objective.head.parameters(), *objective.ibot_head.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
        objective.mask_token.normal_()
    return backbone, objective


def _batch():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(2 * B, 64, generator=g) < 0.4
    masks[[1, 3, 5, 7]] = False  # 2 masked global crops in each rank's half (view-major rows 0, 2 | 4, 6)
    return {
        "image": torch.rand(2 * B, 1, 16, 16, 16, generator=g),
        "local": torch.rand(LOCAL * B, 1, 8, 8, 8, generator=g),
        "masks": masks,
        "n_views": 2,
        "n_local": LOCAL,
        "max_hidden": 64,
        "log_step": False,
    }


def _half(batch: dict, rank: int, world: int) -> dict:
    """The rank's regions: every view-major block of B rows split by rank."""
    out = dict(batch)
    for key in ("image", "local", "masks"):
        views = batch[key].shape[0] // B
        out[key] = torch.cat([block.chunk(world)[rank] for block in batch[key].chunk(views)])
    out["n_masked_images"] = int(out["masks"].any(dim=1).sum())
    return out


def _step(backbone, objective, batch) -> dict:
    loss, logs = objective(batch, backbone)
    loss.backward()
    params = [*backbone.named_parameters(), *objective.named_parameters()]
    grads = {n: p.grad.clone() for n, p in params if p.requires_grad}
    return {
        "loss": loss.detach(),
        "ibot": logs["ibot_loss"],
        "grads": grads,
        "centre": objective.centre.clone(),
        "patch_centre": objective.patch_centre.clone(),
    }


def _rank(rank: int, world: int, init_file: str, out: str, targets: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    backbone, objective = _model(targets)
    result = _step(backbone, objective, _half(_batch(), rank, world))
    for tensor in [result["loss"], *result["grads"].values()]:
        dist.all_reduce(tensor)
        tensor /= world  # DDP's gradient average; the loss as the ranks' mean
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize("targets", ["centre", "sinkhorn"])
def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path, targets):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    batch = _batch()
    batch["n_masked_images"] = int(batch["masks"].any(dim=1).sum())
    one = _step(*_model(targets), batch)
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pt"), targets), nprocs=2)
    two = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.allclose(two["loss"], one["loss"], atol=1e-5)
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 20
    for name, grad in one["grads"].items():
        assert torch.allclose(two["grads"][name], grad, atol=1e-5), name
    assert torch.allclose(two["centre"], one["centre"], atol=1e-6)
    assert torch.allclose(two["patch_centre"], one["patch_centre"], atol=1e-6)
