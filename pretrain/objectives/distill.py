"""objective=distill: a small student learns a frozen teacher's targets, as DINOv2 (sec. 5) and DINOv3 distil
their large models into small ones. The teacher (a format=full export of a DINO run, read by
`pretrain/launch/teacher.py`) reads the two global crops and gives, through its own DINO and iBOT heads, the
targets: Sinkhorn-Knopp over the global batch (default) or softmax centred by the teacher run's last running
centres. The student (`module.backbone`) gets new heads over the teacher's prototypes and learns them with the DINO
loss on class tokens (every crop against the teacher's other global crop, as in DINO) plus the iBOT loss on every
patch token of the global crops (DINOv2 distils unmasked crops), plus KoLeo on its global class tokens.

The teacher takes no gradient and is never updated (no EMA: the declaration states no teacher, so the module never
calls `update_teacher` and the export takes the student, `backbone.*`). It is left out of the objective's
`state_dict` — checkpoints and every export hold the student alone; a resumed run reads the teacher again from
`objective.loss.teacher`. Student and teacher share the token grid (the same crop and patch size): the iBOT targets
are per token, so anything else is refused when the objective is built, before training.

The teacher (`pretrain/launch/teacher.py`, which `build_module` calls: objectives import no loaders) comes from a
format=full export of a self-distillation run (objective=dino): model.safetensors holds
every weight of that run's module — its EMA teacher's backbone (`objective.teacher_backbone.*`), heads
(`objective.teacher_head.*`, `objective.teacher_ibot_head.*`) and running centres — and full.json its config, from
which the backbone is built through the backbone allowlist (never `instantiate`d) and the heads from the run's
`objective.loss`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from voxfm.models.spec import BackboneSpec
from voxfm.pretrain.objectives.dino.heads import DINOHead
from voxfm.pretrain.objectives.dino.koleo import koleo
from voxfm.pretrain.objectives.dino.losses import dino_loss, ibot_loss
from voxfm.pretrain.objectives.dino.monitors import normalised_entropy
from voxfm.pretrain.objectives.dino.targets import centred_softmax, sinkhorn_knopp
from voxfm.pretrain.objectives.protocol import ObjectiveDeclaration

TARGETS = ("sinkhorn", "centre")


class FrozenTeacher(nn.Module):
    """backbone, head (class token), ibot_head (patch tokens; None when the run had none) and the run's last running
    centres `centre` [1, K], `patch_centre` [1, K']. No gradient, always in eval mode (no drop path, no dropout)."""

    def __init__(self, backbone: nn.Module, head: DINOHead, ibot_head: DINOHead | None, centres: dict):
        super().__init__()
        self.backbone, self.head, self.ibot_head = backbone, head, ibot_head
        for name, value in centres.items():
            self.register_buffer(name, value.float().clone())
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """image [B, C, *S] → (class-token logits [B, K], patch-token logits [B, N, K'] or None without iBOT head)."""
        cls, patches = self.backbone.features(image)
        return self.head(cls), None if self.ibot_head is None else self.ibot_head(patches)


def _grid(spec: BackboneSpec) -> str:
    crop = [g * p for g, p in zip(spec.grid, spec.patch_size)]
    return f"crop {crop}, patch {list(spec.patch_size)}: {'×'.join(map(str, spec.grid))} tokens"


class Student(nn.Module):
    """One more student of the same pass: its backbone and its own DINO / iBOT heads (`ibot_head` None at
    ibot_weight=0)."""

    def __init__(self, backbone: nn.Module, head: DINOHead, ibot_head: DINOHead | None):
        super().__init__()
        self.backbone, self.head, self.ibot_head = backbone, head, ibot_head


class DistillObjective(nn.Module):
    """batch {"image": [2B, C, *S] (two global crops, view-major), "local": [n·B, C, *s] (optional)} + student
    backbone → (loss, logs). teacher: a format=full export of objective=dino; targets: "sinkhorn" | "centre";
    hidden_dim, bottleneck_dim: the students' heads (None: the teacher's); their prototypes are the teacher's.
    students: more students by name (their backbones, built from `model`-like configs by `build_module`), trained
    in the same pass on the same teacher forward, each with heads of its own; the loss is the sum of all students'
    (`model` is the first, the one `voxfm export` takes unless `student=<name>`)."""

    declaration = ObjectiveDeclaration(
        backbone="tokens",
        views=2,
        trains_decoder=False,
        teacher=False,  # a frozen teacher, not an EMA one: the export takes the student
        bounds={
            "hidden_dim": {"ge": 1},
            "bottleneck_dim": {"ge": 1},
            "student_temperature": {"gt": 0.0},
            "teacher_temperature": {"gt": 0.0},
            "dino_weight": {"ge": 0.0},
            "ibot_weight": {"ge": 0.0},
            "koleo_weight": {"ge": 0.0},
        },
    )

    def __init__(
        self,
        spec: BackboneSpec,
        teacher: str | FrozenTeacher,
        targets: Literal["sinkhorn", "centre"] = "sinkhorn",
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.07,
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        hidden_dim: int | None = None,
        bottleneck_dim: int | None = None,
        students: dict | None = None,
    ):
        super().__init__()
        if targets not in TARGETS:
            raise ValueError(f"objective.loss.targets={targets!r}; allowed: {', '.join(map(repr, TARGETS))}")
        if not isinstance(teacher, FrozenTeacher):  # the config holds the export's path; build_module reads it
            raise ValueError(f"objective.loss.teacher={teacher}: build the objective through voxfm's build_module")
        self.teacher = teacher
        if ibot_weight > 0 and self.teacher.ibot_head is None:
            raise ValueError(
                f"objective.loss.ibot_weight={ibot_weight}: the teacher has no iBOT head (its run had "
                "ibot_weight=0); set objective.loss.ibot_weight=0"
            )
        self.hidden_dim = hidden_dim or self.teacher.head.mlp[0].out_features
        self.bottleneck_dim = bottleneck_dim or self.teacher.head.last_layer.weight.shape[1]
        self.head, self.ibot_head = self._heads(spec, "model", ibot_weight > 0)
        self.students = nn.ModuleDict()
        for name, backbone in (students or {}).items():
            if not isinstance(backbone, nn.Module) or not hasattr(backbone, "features"):
                raise ValueError(
                    f"objective.loss.students.{name}: expected a token backbone (a ViT or Primus) built by voxfm's "
                    "build_module, e.g. +model@objective.loss.students.{name}=vit_tiny"
                )
            self.students[name] = Student(backbone, *self._heads(backbone.spec, f"students.{name}", ibot_weight > 0))
        self.targets, self.student_temperature = targets, student_temperature
        self.teacher_temperature = teacher_temperature
        self.weights = (dino_weight, ibot_weight, koleo_weight)
        # the teacher is read from its export, never from a checkpoint: out of every state_dict
        self.register_state_dict_post_hook(_without_teacher)

    def _heads(self, spec: BackboneSpec, who: str, ibot: bool) -> tuple[DINOHead, DINOHead | None]:
        """A student's new heads over the teacher's prototypes (no iBOT head at ibot_weight=0: no unused parameters
        for DDP), once its token grid is checked against the teacher's."""
        theirs = self.teacher.backbone.spec
        if (tuple(spec.grid), tuple(spec.patch_size)) != (tuple(theirs.grid), tuple(theirs.patch_size)):
            raise ValueError(
                f"objective.loss.teacher: the teacher's token grid ({_grid(theirs)}) is not the student's "
                f"({who}: {_grid(spec)}); distillation needs the same data.crop_size and patch size"
            )
        prototypes = self.teacher.head.last_layer.weight.shape[0]
        head = DINOHead(spec.feature_dim, prototypes, self.hidden_dim, self.bottleneck_dim)
        if not ibot:
            return head, None
        k = self.teacher.ibot_head.last_layer.weight.shape[0]
        return head, DINOHead(spec.feature_dim, k, self.hidden_dim, self.bottleneck_dim)

    def extra_backbones(self) -> list[nn.Module]:
        """The backbones of the students beside `model` (layer-wise lr decay and speed-ups apply to them too)."""
        return [student.backbone for student in self.students.values()]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A checkpoint holds no teacher: the one read from its export stands in for its keys (a strict load)."""
        for name, value in self.teacher.state_dict().items():
            state_dict.setdefault(f"{prefix}teacher.{name}", value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _probs(self, logits: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """logits [..., K] → the teacher's targets [..., K] (Sinkhorn-Knopp over the global batch, or centred)."""
        if self.targets == "sinkhorn":
            return sinkhorn_knopp(logits.float(), self.teacher_temperature)
        return centred_softmax(logits, centre, self.teacher_temperature)

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        if batch.get("n_views", 2) != self.declaration.views:
            raise ValueError("objective=distill needs two global crops per region: set objective.views.n_views=2")
        if batch.get("masks") is not None:
            raise ValueError(
                "objective=distill distils unmasked crops (DINOv2 sec. 5): set objective.views.masking=null"
            )
        image = batch["image"]
        with torch.no_grad():  # one teacher forward for every student
            teacher_cls, teacher_patches = self.teacher(image)
            probs = self._probs(teacher_cls, self.teacher.centre)
            patch_probs = None
            if self.ibot_head is not None:
                patch_probs = self._probs(teacher_patches, self.teacher.patch_centre)
        loss, logs = self._student(batch, backbone, self.head, self.ibot_head, probs, patch_probs)
        for name, student in self.students.items():
            extra, extra_logs = self._student(
                batch, student.backbone, student.head, student.ibot_head, probs, patch_probs
            )
            loss = loss + extra
            logs |= {f"{name}/{k}": v for k, v in extra_logs.items()}
        logs["loss"] = loss.detach()
        if batch.get("log_step", True):
            logs["teacher_entropy"] = normalised_entropy(probs)
        return loss, logs

    def _student(
        self,
        batch: dict,
        backbone: nn.Module,
        head: DINOHead,
        ibot_head: DINOHead | None,
        probs: torch.Tensor,
        patch_probs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict]:
        """One student's loss on the teacher's targets: DINO on class tokens (local crops too), iBOT on every patch
        token of the global crops, KoLeo on its global class tokens."""
        image = batch["image"]
        student_cls, student_patches = backbone.features(image)
        crops = list(student_cls.chunk(2))
        if batch.get("local") is not None:
            crops += list(backbone.features(batch["local"])[0].chunk(batch["n_local"]))
        logits = head(torch.cat(crops)).split([c.shape[0] for c in crops])
        distillation = dino_loss(list(logits), list(probs.chunk(2)), self.student_temperature)
        spread = sum(koleo(c) for c in crops[:2])  # summed over the two global crops, as DINO's objective does
        dino_w, ibot_w, koleo_w = self.weights
        loss = dino_w * distillation + koleo_w * spread
        logs = {"dino_loss": distillation.detach(), "koleo": spread.detach()}
        if ibot_head is not None:
            every = torch.ones(student_patches.shape[:2], dtype=torch.bool, device=image.device)
            patch_loss = ibot_loss(ibot_head(student_patches), patch_probs, every, self.student_temperature)
            loss = loss + ibot_w * patch_loss
            logs["ibot_loss"] = patch_loss.detach()
        return loss, {**logs, "loss": loss.detach()}


def _without_teacher(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[key]
