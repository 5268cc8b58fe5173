"""Gram anchoring (DINOv3: Siméoni et al. 2025, arXiv:2508.10104, "Gram anchoring"): the student's patch
similarities are held close to those of a Gram teacher — a frozen snapshot of the EMA teacher's backbone, taken at
`start_step` and refreshed every `refresh_every` steps — so that a long run keeps the dense features an earlier
checkpoint had while its global features go on improving.

The loss, per image of N patch features X (each row L2-normalised), G = X Xᵀ:
    ||G_student − G_gram||²_F / N², averaged over the global crops
— DINOv3's `normalized: true, img_level: true, remove_neg: false, tokens_used: all`: the student's features are those
of its (iBOT-masked) global crops, the Gram teacher sees the same crops unmasked. teacher_scale s > 1: the Gram
teacher reads the global crops resampled s× larger per axis (trilinear) and its patch features are average-pooled
back to the student's grid (DINOv3 feeds its Gram teacher 2× crops and resizes its features: smoother targets; in 3D
s = 2 means 8× the tokens).

The snapshot is a submodule, so checkpoints save and restore it with the run; whether a step refreshes it is decided
on the host from the objective's own step count, after that step's EMA update (no device read).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from voxfm.pretrain.objectives.dino.heads import NORMALISE_EPS


def gram_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """student, target [B, N, D] → mean over the B images of ||ŜŜᵀ − T̂T̂ᵀ||²_F / N², rows L2-normalised, in fp32
    (autocast off: the two Gram matrices nearly cancel). For N > D the same value comes from D×D products,
    ||ŜᵀŜ||² − 2||ŜᵀT̂||² + ||T̂ᵀT̂||² (tr(AB) = tr(BA)): a crop of thousands of 3D tokens never builds an N×N matrix."""
    with torch.autocast(student.device.type, enabled=False):
        s = F.normalize(student.float(), dim=-1, eps=NORMALISE_EPS)
        t = F.normalize(target.float(), dim=-1, eps=NORMALISE_EPS)
        n, d = s.shape[1], s.shape[2]
        if n <= d:
            return (s @ s.transpose(1, 2) - t @ t.transpose(1, 2)).square().mean()
        st, tt = s.transpose(1, 2), t.transpose(1, 2)
        squared = (st @ s).square().sum((1, 2)) - 2 * (st @ t).square().sum((1, 2)) + (tt @ t).square().sum((1, 2))
        return (squared / n**2).mean()


class GramAnchoring(nn.Module):
    """objective.loss.gram of objective=dino. weight: the loss's weight (0: off — the objective keeps no Gram
    teacher); start_step: the step whose EMA teacher is the first snapshot and from which the loss counts;
    refresh_every: steps between snapshots (None: the first one stays); teacher_scale: the Gram teacher's input
    scale per axis (an integer: its features pool back exactly onto the student's grid).

    `attach(teacher_backbone)` when the objective gets its teacher; `at_step(teacher_backbone, step)` after every EMA
    update (`step`: EMA updates so far); `forward(image, student_patches)` → the loss while `active`."""

    def __init__(
        self, weight: float = 0.0, start_step: int = 0, refresh_every: int | None = None, teacher_scale: int = 1
    ):
        super().__init__()
        for name, value, low in (("start_step", start_step, 0), ("refresh_every", refresh_every, 1)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"objective.loss.gram.{name}={value!r}: expected an int >= {low}")
        if not isinstance(teacher_scale, int) or teacher_scale < 1:
            raise ValueError(f"objective.loss.gram.teacher_scale={teacher_scale!r}: expected an int >= 1")
        if weight < 0:
            raise ValueError(f"objective.loss.gram.weight={weight}: expected a value >= 0 (0: off)")
        self.weight, self.start_step = weight, start_step
        self.refresh_every, self.teacher_scale = refresh_every, teacher_scale
        self.teacher: nn.Module | None = None
        self.patch_size: tuple[int, ...] = ()
        # the loss counts from start_step: a host bool that flips once (one recompilation under trainer.compile)
        self.active = False
        self.register_buffer("refreshed_at", torch.full((), -1, dtype=torch.long))  # the snapshot's step; -1: none

    def attach(self, teacher_backbone: nn.Module) -> None:
        """The Gram teacher: a frozen copy of the EMA teacher's backbone (taken now when start_step is 0)."""
        self.teacher = copy.deepcopy(teacher_backbone).requires_grad_(False).eval()
        self.patch_size = tuple(teacher_backbone.spec.patch_size)
        self.at_step(teacher_backbone, 0)

    def due(self, step: int) -> bool:
        """Whether the snapshot is taken after `step` EMA updates: at start_step, then every refresh_every steps."""
        if step < self.start_step:
            return False
        return (
            step == self.start_step or bool(self.refresh_every) and (step - self.start_step) % self.refresh_every == 0
        )

    @torch.no_grad()
    def at_step(self, teacher_backbone: nn.Module, step: int) -> None:
        """After the EMA update that makes `step` updates: the snapshot when due (tensor copies; host ints only)."""
        self.active = step >= self.start_step
        if self.due(step):
            self.teacher.load_state_dict(teacher_backbone.state_dict())
            self.refreshed_at.fill_(step)

    def train(self, mode: bool = True) -> GramAnchoring:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # no drop path, no dropout, as the EMA teacher
        return self

    def targets(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, C, *S] → the Gram teacher's patch features [B, N, D] on the student's grid S / patch."""
        scale = self.teacher_scale
        if scale > 1:
            # in fp32: the views may come in fp16 (`view_dtype`); the teacher's first layer rounds once after this
            image = F.interpolate(image.float(), scale_factor=scale, mode="trilinear", align_corners=False)
        patches = self.teacher.features(image)[1]
        if scale > 1:
            grid = [s // p for s, p in zip(image.shape[2:], self.patch_size)]
            cube = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)
            patches = F.avg_pool3d(cube, kernel_size=scale).flatten(2).transpose(1, 2)
        return patches

    def forward(self, image: torch.Tensor, student_patches: torch.Tensor) -> torch.Tensor:
        """image [B, C, *S]: the global crops; student_patches [B, N, D]: the student's on them → the loss []. The
        Gram teacher takes no gradient; only the student's features carry one."""
        with torch.no_grad():
            target = self.targets(image)
        return gram_loss(student_patches, target)
