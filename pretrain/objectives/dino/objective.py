"""Self-distillation with an EMA teacher (DINO; Caron et al. 2021), first form: two global views per region, the
backbone's pooled features, a DINO head, targets from a centred teacher softmax or Sinkhorn-Knopp over the global
batch, KoLeo on the student's features. Local crops, the class token and iBOT's masked patch loss build on it
(issue 17).

The teacher (a copy of the backbone and of the head, no gradients, always in eval mode) is part of the objective,
so it is saved with the checkpoint and restored on resume; `update_teacher` moves it towards the student after
every optimiser step at the scheduled momentum (`ema.teacher_momentum`), and the export takes its backbone.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from models.spec import BackboneSpec
from pretrain.objectives.dino.ema import ema_update, teacher_momentum
from pretrain.objectives.dino.heads import DINOHead
from pretrain.objectives.dino.koleo import koleo
from pretrain.objectives.dino.losses import dino_loss
from pretrain.objectives.dino.monitors import effective_rank, gram_off_diagonal, normalised_entropy, teacher_information
from pretrain.objectives.dino.targets import centred_softmax, sinkhorn_knopp, updated_centre
from pretrain.objectives.protocol import ObjectiveDeclaration


class DINOObjective(nn.Module):
    """batch {"image": [2B, C, X, Y, Z] (two views, view-major), "n_views": 2} + student backbone → (loss, logs)."""

    declaration = ObjectiveDeclaration(
        backbone="any", views=2, trains_decoder=False, teacher=True,
        bounds={"out_dim": {"ge": 2}, "hidden_dim": {"ge": 1}, "bottleneck_dim": {"ge": 1},
                "student_temperature": {"gt": 0.0}, "teacher_temperature": {"gt": 0.0},
                "teacher_temperature_start": {"gt": 0.0}, "teacher_warmup_steps": {"ge": 0},
                "centre_momentum": {"ge": 0.0, "le": 1.0}, "koleo_weight": {"ge": 0.0},
                "momentum_start": {"ge": 0.0, "le": 1.0}, "momentum_end": {"ge": 0.0, "le": 1.0}},
    )

    def __init__(self, spec: BackboneSpec, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 student_temperature: float = 0.1, teacher_temperature: float = 0.07,
                 teacher_temperature_start: float = 0.04, teacher_warmup_steps: int = 0,
                 targets: str = "centre", centre_momentum: float = 0.9, koleo_weight: float = 0.1,
                 momentum_start: float = 0.992, momentum_end: float = 1.0):
        super().__init__()
        if targets not in ("centre", "sinkhorn", "none"):
            raise ValueError(f"objective.loss.targets={targets!r}; allowed: 'centre', 'sinkhorn', 'none' (no "
                             "centring: collapses, for testing the alarm)")
        self.head = DINOHead(spec.feature_dim, out_dim, hidden_dim, bottleneck_dim)
        self.student_temperature, self.targets, self.koleo_weight = student_temperature, targets, koleo_weight
        self.temperatures = (teacher_temperature_start, teacher_temperature, teacher_warmup_steps)
        self.centre_momentum, self.momenta = centre_momentum, (momentum_start, momentum_end)
        self.register_buffer("centre", torch.zeros(1, out_dim))
        self.register_buffer("teacher_steps", torch.zeros((), dtype=torch.long))  # EMA updates so far
        self._steps = 0  # the same count on the host
        self.teacher_backbone: nn.Module | None = None
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)

    def attach_teacher(self, backbone: nn.Module) -> None:
        """The teacher's backbone: a copy of the freshly built student (the same start, as in DINO)."""
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head.load_state_dict(self.head.state_dict())

    def train(self, mode: bool = True) -> DINOObjective:
        super().train(mode)
        for teacher in (self.teacher_backbone, self.teacher_head):  # no drop path, no dropout in the teacher
            if teacher is not None:
                teacher.eval()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._steps = int(self.teacher_steps)  # a resumed run continues the schedules (one read, at load)

    @torch.no_grad()
    def update_teacher(self, backbone: nn.Module, total_steps: int) -> float:
        """teacher ← m·teacher + (1−m)·student for the backbone and the head; → m. The step count is kept on the
        host as well, so the schedule costs no device read."""
        momentum = teacher_momentum(self._steps, total_steps, *self.momenta)
        student = [*backbone.parameters(), *self.head.parameters()]
        teacher = [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]
        ema_update(teacher, student, momentum)
        self._steps += 1
        self.teacher_steps += 1
        return momentum

    def _teacher_temperature(self) -> torch.Tensor:
        """`targets.teacher_temperature` at the teacher's step, as a device tensor (no host read per step)."""
        start, end, warmup = self.temperatures
        if warmup <= 0:
            return torch.tensor(end, device=self.centre.device)
        progress = torch.clamp(self.teacher_steps.float() / warmup, max=1.0)
        return start + (end - start) * progress

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        if batch.get("n_views", 2) != self.declaration.views:
            raise ValueError("objective=dino needs two global views per region: set objective.views.n_views=2")
        if self.teacher_backbone is None:
            raise RuntimeError("objective=dino has no teacher: build it with pretrain.training.run.build_module")
        image = batch["image"]
        features = backbone.pooled(image)  # [2B, D]
        student = self.head(features).chunk(2)
        temperature = self._teacher_temperature()
        with torch.no_grad():
            teacher_logits = self.teacher_head(self.teacher_backbone.pooled(image)).float()
            if self.targets == "sinkhorn":
                probs = sinkhorn_knopp(teacher_logits, temperature)
            elif self.targets == "none":
                probs = torch.softmax(teacher_logits / temperature, dim=-1)
            else:
                probs = centred_softmax(teacher_logits, self.centre, temperature)
                self.centre.copy_(updated_centre(self.centre, teacher_logits, self.centre_momentum))
        distillation = dino_loss(list(student), list(probs.chunk(2)), self.student_temperature)
        spread = sum(koleo(f) for f in features.chunk(2)) / 2
        loss = distillation + self.koleo_weight * spread
        logs = {"loss": loss.detach(), "dino_loss": distillation.detach(), "koleo": spread.detach()}
        if batch.get("log_step", True):  # the monitors read values back: logging steps only
            mean, std = gram_off_diagonal(features.detach())
            logs.update(teacher_entropy=normalised_entropy(probs), teacher_information=teacher_information(probs),
                        effective_rank=effective_rank(features.detach()),
                        gram_mean=mean, gram_std=std, teacher_temperature=temperature)
        return loss, logs
