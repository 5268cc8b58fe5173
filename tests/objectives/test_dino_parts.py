"""The self-distillation building blocks (pretrain/objectives/dino/), each against its formula."""

import math
import os
import pickle

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from voxfm.data.views.masking import BlockMasking
from voxfm.pretrain.objectives.dino.ema import ema_update, teacher_momentum
from voxfm.pretrain.objectives.dino.heads import DINOHead
from voxfm.pretrain.objectives.dino.koleo import koleo
from voxfm.pretrain.objectives.dino.monitors import effective_rank, gram_off_diagonal, normalised_entropy
from voxfm.pretrain.objectives.dino.targets import centred_softmax, sinkhorn_knopp, teacher_temperature, updated_centre


def test_dino_head_has_unit_norm_prototypes_that_stay_fixed_and_bounded_logits():
    head = DINOHead(32, out_dim=100, hidden_dim=64, bottleneck_dim=16)
    x = torch.randn(8, 32) * 1e4  # huge features: the bottleneck is normalised, the logits stay bounded
    logits = head(x)
    assert logits.shape == (8, 100) and logits.abs().max() <= 1.0 + 1e-5
    logits.sum().backward()
    prototypes = head.last_layer.weight
    assert prototypes.grad is not None
    with torch.no_grad():
        prototypes.mul_(torch.rand(100, 1) * 50)  # lengths do not count: every prototype acts with norm 1
    assert torch.allclose(head(x), logits, atol=1e-5)
    assert pickle.loads(pickle.dumps(head)) is not None  # strategy=ddp_spawn pickles the model
    assert not torch.isnan(DINOHead(32, out_dim=10).to(torch.bfloat16)(torch.zeros(2, 32, dtype=torch.bfloat16))).any()


def test_teacher_temperature_warms_up_linearly():
    assert teacher_temperature(0, 0.04, 0.07, 10) == 0.04
    assert teacher_temperature(5, 0.04, 0.07, 10) == pytest.approx(0.055)
    assert teacher_temperature(10, 0.04, 0.07, 10) == teacher_temperature(99, 0.04, 0.07, 10) == 0.07


def test_centring_follows_its_formula():
    g = torch.Generator().manual_seed(0)
    logits, centre = torch.randn(6, 5, generator=g), torch.randn(1, 5, generator=g)
    expected = centre * 0.9 + logits.mean(dim=0, keepdim=True) * 0.1
    assert torch.allclose(updated_centre(centre, logits, 0.9), expected, atol=1e-7)
    assert torch.allclose(centred_softmax(logits, centre, 0.04), torch.softmax((logits - centre) / 0.04, dim=-1))


def test_sinkhorn_knopp_is_doubly_stochastic():
    # prototype logits are cosines (the head's unit-norm bottleneck and prototypes): in [-1, 1]
    logits = torch.rand(16, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    q = sinkhorn_knopp(logits, temperature=0.05, iterations=300)
    assert torch.allclose(q.sum(dim=1), torch.ones(16), atol=1e-3)  # each sample: a distribution
    assert torch.allclose(q.sum(dim=0), torch.full((8,), 16 / 8), atol=1e-3)  # each prototype: an equal share
    errors = [(sinkhorn_knopp(logits, 0.05, n).sum(dim=0) - 2).abs().max() for n in (1, 3, 10)]
    assert errors[0] > errors[1] > errors[2]  # DINOv2's 3 iterations move toward equal shares; more get there


def test_koleo_equals_its_formula_on_a_hand_made_batch():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    # nearest neighbours on the unit circle: 0↔3 (distance sqrt(0.8)), 1↔3 (sqrt(0.4)), 2↔1 (sqrt(2)), 3↔1
    d = torch.tensor([math.sqrt(0.8), math.sqrt(0.4), math.sqrt(2.0), math.sqrt(0.4)])
    assert koleo(x).item() == pytest.approx(-torch.log(d + 1e-8).mean().item(), abs=1e-5)


def test_block_masks_hit_the_ratio_and_form_3d_blocks():
    g = torch.Generator().manual_seed(2)
    grid, n = (12, 12, 12), 12**3
    for ratio in (0.2, 0.5, 0.75):
        masking = BlockMasking(patch_size=8, ratio_range=(ratio, ratio), probability=1.0)
        masks = masking(20, (96, 96, 96), g)  # [20, N]
        hidden = masks.float().mean(dim=1)
        assert (hidden >= ratio - 0.5 / n).all() and (hidden <= ratio + 27 / n).all()  # at most one box past
        for mask in masks.view(20, *grid):
            padded = F.pad(mask[None, None].float(), (1, 1, 1, 1, 1, 1))[0, 0]
            neighbours = sum(padded.roll(s, d)[1:-1, 1:-1, 1:-1] for d in range(3) for s in (1, -1))
            assert (neighbours[mask] >= 1).all()  # no isolated token: every hidden one is part of a box of side >= 2
        assert int(masks.sum(dim=1).max()) <= masking.max_hidden(grid)
    short = BlockMasking(patch_size=8, ratio_range=(0.9, 0.9), probability=1.0)
    short.boxes = lambda grid: 1  # boxes that cannot reach the target hide what they cover, nothing more
    assert (short(4, (32, 32, 32), g).sum(dim=1) <= 27).all()
    masking = BlockMasking(patch_size=16, ratio_range=(0.2, 0.75), probability=0.5)
    masks = masking(200, (96, 96, 96), g)
    masked = masks.any(dim=1)
    assert int(masked.sum()) == 100 == masking.n_masked_images(200)  # exactly half the images
    ratios = masks[masked].float().mean(dim=1)
    assert ratios.min() >= 0.2 - 1e-6 and ratios.max() <= 0.75 + 27 / 216
    assert abs(ratios.mean().item() - 0.475) < 0.05  # uniform over the range, slightly past it by the last box


def test_ema_update_is_exactly_m_t_plus_one_minus_m_s_on_a_cosine_schedule():
    g = torch.Generator().manual_seed(3)
    teacher, student = [torch.randn(5, 4, generator=g)], [torch.randn(5, 4, generator=g)]
    m = teacher_momentum(250, 1000, 0.992, 1.0)
    assert m == pytest.approx(1.0 - 0.008 * (math.cos(math.pi * 0.25) + 1) / 2)
    assert teacher_momentum(0, 1000) == pytest.approx(0.992) and teacher_momentum(1000, 1000) == 1.0
    expected = teacher[0] * m + student[0] * (1 - m)
    ema_update(teacher, student, m)
    assert torch.equal(teacher[0], expected)


def test_monitors_tell_a_healthy_batch_from_collapsed_ones():
    g = torch.Generator().manual_seed(4)
    healthy = torch.randn(64, 32, generator=g)
    one_hot = F.one_hot(torch.zeros(64, dtype=torch.long), 100).float()  # every sample: prototype 0
    assert normalised_entropy(torch.softmax(torch.randn(64, 100, generator=g) * 5, -1)) > 0.7
    assert normalised_entropy(one_hot) < 0.1
    assert effective_rank(healthy) > 10
    assert effective_rank(healthy[:, :1] * torch.ones(1, 32) + 1e-4 * healthy) < 2  # one direction
    mean, std = gram_off_diagonal(torch.ones(64, 32) + 1e-4 * healthy)
    assert mean >= 0.995 and std <= 0.01
    assert abs(gram_off_diagonal(healthy)[0]) < 0.1


def _rank_targets(rank: int, world: int, init_file: str, out: str, logits: torch.Tensor) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    local = logits.chunk(world)[rank]
    centre = updated_centre(torch.zeros(1, logits.shape[1]), local, 0.9)
    assignments = [None] * world
    dist.all_gather_object(assignments, sinkhorn_knopp(local, 0.05, 3))
    if rank == 0:
        torch.save({"centre": centre, "sinkhorn": torch.cat(assignments)}, out)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_centre_and_sinkhorn_over_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    logits = torch.rand(12, 6, generator=torch.Generator().manual_seed(5)) * 2 - 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank_targets, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pt"), logits), nprocs=2)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.allclose(got["centre"], updated_centre(torch.zeros(1, 6), logits, 0.9), atol=1e-6)
    assert torch.allclose(got["sinkhorn"], sinkhorn_knopp(logits, 0.05, 3), atol=1e-5)


def test_dino_loss_skips_same_crop_pairs_and_follows_its_formula():
    from voxfm.pretrain.objectives.dino.losses import dino_loss

    g = torch.Generator().manual_seed(6)
    students = [torch.randn(4, 10, generator=g) for _ in range(3)]  # 2 globals + 1 local
    teachers = [torch.softmax(torch.randn(4, 10, generator=g), -1) for _ in range(2)]

    def ce(t, s):
        return -(t * torch.log_softmax(s / 0.1, -1)).sum(-1).mean()

    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # (teacher crop, student crop), never the same crop
    expected = sum(ce(teachers[t], students[s]) for t, s in pairs) / 4
    assert torch.allclose(dino_loss(students, teachers, 0.1), expected, atol=1e-6)


def test_ibot_loss_ignores_unmasked_tokens_and_normalises_per_image_over_all_crops():
    from voxfm.pretrain.objectives.dino.losses import ibot_loss

    g = torch.Generator().manual_seed(7)
    student, teacher = torch.randn(3, 8, 5, generator=g), torch.softmax(torch.randn(3, 8, 5, generator=g), -1)
    masks = torch.zeros(3, 8, dtype=torch.bool)
    masks[0, :2], masks[1, :6] = True, True  # image 2 has no hidden token
    loss = ibot_loss(student, teacher, masks)
    perturbed = student.clone()
    perturbed[~masks] += 100 * torch.randn(int((~masks).sum()), 5, generator=g)
    assert torch.equal(ibot_loss(perturbed, teacher, masks), loss)  # unmasked tokens do not count
    per_token = -(teacher * torch.log_softmax(student / 0.1, -1)).sum(-1)
    expected = (per_token[0, :2].mean() + per_token[1, :6].mean()) / 3  # per image; all 3 crops count (DINOv2)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(ibot_loss(student[:2], teacher[:2], masks[:2], n_images=3), expected, atol=1e-6)


def test_teacher_information_is_zero_when_every_input_gets_the_same_distribution():
    from voxfm.pretrain.objectives.dino.monitors import teacher_information

    same = torch.softmax(torch.randn(1, 16, generator=torch.Generator().manual_seed(8)), -1).expand(8, -1)
    assert abs(float(teacher_information(same))) < 1e-6
    distinct = F.one_hot(torch.arange(8), 16).float()  # 8 inputs, 8 different certain prototypes
    assert float(teacher_information(distinct)) == pytest.approx(math.log(8) / math.log(16), abs=1e-5)
