"""Self-distillation with an EMA teacher (DINOv2 / iBOT): the student sees 2 global and N local crops of each region
(`data/views/multicrop.py`), the teacher the global crops only. The DINO loss matches the student's class token of every
crop to the teacher's of the *other* global crops; the iBOT loss matches the student's hidden patch tokens of the
global crops (block masks, replaced by a learned mask token) to the teacher's unmasked tokens at the same
positions; KoLeo spreads the student's class tokens of each global crop. Targets: centred teacher softmax (one
centre per head) or Sinkhorn-Knopp, both over the global batch.

The teacher (a copy of the backbone and of both heads, no gradients, always in eval mode) is part of the
objective, so it is saved with the checkpoint and restored on resume; `update_teacher` moves it towards the student
after every optimiser step at the scheduled momentum (`ema.teacher_momentum`), and the export takes its backbone.
The backbone gives `features(x, masks, mask_token) -> (class token, patch tokens)` on crops of any size its patch
divides (ViT: class token + interpolated positions; Primus: first register token + RoPE on the crop's grid).

`gram` (DINOv3's Gram anchoring, `gram.py`, off unless its weight is > 0) adds a loss that holds the student's patch
similarities on the global crops close to those of a frozen snapshot of the EMA teacher, refreshed on a schedule.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from voxfm.models.spec import BackboneSpec
from voxfm.pretrain.objectives.dino.ema import FP32Teacher, ema_update, teacher_momentum
from voxfm.pretrain.objectives.dino.gram import GramAnchoring
from voxfm.pretrain.objectives.dino.heads import DINOHead
from voxfm.pretrain.objectives.dino.koleo import koleo
from voxfm.pretrain.objectives.dino.losses import dino_loss, ibot_loss
from voxfm.pretrain.objectives.dino.monitors import (
    effective_rank,
    far_patch_similarity,
    gram_off_diagonal,
    normalised_entropy,
    teacher_information,
)
from voxfm.pretrain.objectives.dino.targets import centred_softmax, sinkhorn_knopp, updated_centre
from voxfm.pretrain.objectives.protocol import ObjectiveDeclaration


def hidden_tokens(
    patches: torch.Tensor, masks: torch.Tensor, n_images: int, per_image: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """patches [B, N, D], masks [B, N] → (the masked images' first `per_image` hidden tokens [n_images, per_image,
    D], their validity [n_images, per_image] (an image may hide fewer), and the picked (rows, positions)). Static
    shapes from the masking's own bounds: no host read, compiles as one graph."""
    rows = masks.any(dim=1).float().argsort(descending=True, stable=True)[:n_images]  # the masked images
    picked = masks[rows]
    positions = picked.float().argsort(dim=1, descending=True, stable=True)[:, :per_image]
    valid = picked.gather(1, positions)
    tokens = patches[rows].gather(1, positions.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return tokens, valid, (rows, positions)


class DINOObjective(nn.Module):
    """batch {"image": [2B, C, *S] (two global crops, view-major), "local": [n·B, C, *s] (optional), "masks":
    [2B, N] (optional, with "n_masked_images", "max_hidden")} + student backbone → (loss, logs)."""

    declaration = ObjectiveDeclaration(
        backbone="tokens",
        views=2,
        mask_cell_is_token=True,
        masks_if="ibot_weight",
        trains_decoder=False,
        teacher=True,
        bounds={
            "out_dim": {"ge": 2},
            "hidden_dim": {"ge": 1},
            "bottleneck_dim": {"ge": 1},
            "patch_out_dim": {"ge": 2},
            "student_temperature": {"gt": 0.0},
            "teacher_temperature": {"gt": 0.0},
            "teacher_temperature_start": {"gt": 0.0},
            "teacher_warmup_steps": {"ge": 0},
            "centre_momentum": {"ge": 0.0, "le": 1.0},
            "koleo_weight": {"ge": 0.0},
            "dino_weight": {"ge": 0.0},
            "ibot_weight": {"ge": 0.0},
            "momentum_start": {"ge": 0.0, "le": 1.0},
            "momentum_end": {"ge": 0.0, "le": 1.0},
        },
    )

    def __init__(
        self,
        spec: BackboneSpec,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        patch_out_dim: int | None = None,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.07,
        teacher_temperature_start: float = 0.04,
        teacher_warmup_steps: int = 0,
        targets: str = "centre",
        centre_momentum: float = 0.9,
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        momentum_start: float = 0.992,
        momentum_end: float = 1.0,
        gram: GramAnchoring | None = None,
    ):
        super().__init__()
        if targets not in ("centre", "sinkhorn", "none"):
            raise ValueError(
                f"objective.loss.targets={targets!r}; allowed: 'centre', 'sinkhorn', 'none' (no "
                "centring: collapses, for testing the alarm)"
            )
        patch_out_dim = patch_out_dim or out_dim
        self.head = DINOHead(spec.feature_dim, out_dim, hidden_dim, bottleneck_dim)
        self.ibot_head = self.mask_token = None  # ibot_weight=0: the DINO loss alone (no unused parameters for DDP)
        if ibot_weight > 0:
            self.ibot_head = DINOHead(spec.feature_dim, patch_out_dim, hidden_dim, bottleneck_dim)
            self.mask_token = nn.Parameter(torch.zeros(spec.feature_dim))  # the student's hidden patches
        self.student_temperature, self.targets = student_temperature, targets
        self.weights = (dino_weight, ibot_weight, koleo_weight)
        self.temperatures = (teacher_temperature_start, teacher_temperature, teacher_warmup_steps)
        self.centre_momentum, self.momenta = centre_momentum, (momentum_start, momentum_end)
        self.register_buffer("centre", torch.zeros(1, out_dim))
        self.register_buffer("patch_centre", torch.zeros(1, patch_out_dim))
        self.register_buffer("teacher_steps", torch.zeros((), dtype=torch.long))  # EMA updates so far
        self.register_buffer("last_momentum", torch.zeros(()), persistent=False)  # logged with the next step
        self._steps = 0  # the same count on the host
        self.teacher_backbone: nn.Module | None = None
        self.teacher_fp32: FP32Teacher | None = None  # half-precision weights only (see `attach_teacher`)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.teacher_ibot_head = None if self.ibot_head is None else copy.deepcopy(self.ibot_head).requires_grad_(False)
        self.gram = gram if gram is not None and gram.weight > 0 else None  # weight 0: no Gram teacher, no state
        self.patch_size = tuple(spec.patch_size)  # the token grid of a crop, for the dense-feature monitor

    def attach_teacher(self, backbone: nn.Module, half_precision_weights: bool = False) -> None:
        """The teacher's backbone: a copy of the freshly built student (the same start, as in DINO).
        half_precision_weights: the strategy will cast the parameters to bf16/fp16 (DeepSpeed): the EMA then runs
        on fp32 copies (`ema.FP32Teacher`)."""
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head.load_state_dict(self.head.state_dict())
        if self.ibot_head is not None:
            self.teacher_ibot_head.load_state_dict(self.ibot_head.state_dict())
        if half_precision_weights:
            self.teacher_fp32 = FP32Teacher(self.pairs(backbone)[0])
        if self.gram is not None:
            self.gram.attach(self.teacher_backbone)

    def train(self, mode: bool = True) -> DINOObjective:
        super().train(mode)
        for teacher in (self.teacher_backbone, self.teacher_head, self.teacher_ibot_head):  # no drop path, dropout
            if teacher is not None:
                teacher.eval()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        masters = [k for k in state_dict if k.startswith(prefix + "teacher_fp32.")]
        if masters and self.teacher_fp32 is None:  # a half-precision run resumed in fp32: its exact teacher
            for key, name in zip(sorted(masters, key=lambda k: int(k.rsplit(".t", 1)[1])), self.teacher_names()):
                state_dict[prefix + name] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._steps = int(self.teacher_steps)  # a resumed run continues the schedules (one read, at load)
        if self.gram is not None:  # its snapshot and refresh step load with its own state, after this
            self.gram.active = self._steps >= self.gram.start_step

    def teacher_names(self) -> list[str]:
        """The teacher's parameter names, in `pairs` order (FP32Teacher's t0, t1, ...)."""
        modules = {
            "teacher_backbone": self.teacher_backbone,
            "teacher_head": self.teacher_head,
            "teacher_ibot_head": self.teacher_ibot_head,
        }
        return [f"{m}.{n}" for m, module in modules.items() if module is not None for n, _ in module.named_parameters()]

    def pairs(self, backbone: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher, student) parameters in matching order: backbone, DINO head, iBOT head."""
        ibot = [] if self.ibot_head is None else [(self.teacher_ibot_head, self.ibot_head)]
        pairs = [(self.teacher_backbone, backbone), (self.teacher_head, self.head), *ibot]
        return [p for t, _ in pairs for p in t.parameters()], [p for _, s in pairs for p in s.parameters()]

    def momentum(self, total_steps: int) -> float:
        """The momentum of the next EMA update (a host float: no device read)."""
        return teacher_momentum(self._steps, total_steps, *self.momenta)

    @torch.no_grad()
    def update_teacher(self, backbone: nn.Module, total_steps: int) -> float:
        """teacher ← m·teacher + (1−m)·student for the backbone and both heads, then the Gram teacher's snapshot
        when this step is one of its refresh steps; → m."""
        momentum = self.momentum(total_steps)
        if self.teacher_fp32 is None:
            ema_update(*self.pairs(backbone), momentum)
        else:
            self.teacher_fp32.update(*self.pairs(backbone), momentum)
        self.last_momentum.fill_(momentum)  # a kernel argument, not a copy: no sync
        self._steps += 1
        self.teacher_steps += 1
        if self.gram is not None:
            self.gram.at_step(self.teacher_backbone, self._steps)
        return momentum

    def _teacher_temperature(self) -> torch.Tensor:
        """`targets.teacher_temperature` at the teacher's step, as a device tensor (no host read per step)."""
        start, end, warmup = self.temperatures
        if warmup <= 0:
            return torch.tensor(end, device=self.centre.device)
        progress = torch.clamp(self.teacher_steps.float() / warmup, max=1.0)
        return start + (end - start) * progress

    @torch.no_grad()
    def _targets(
        self, logits: torch.Tensor, centre: torch.Tensor, temperature: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = logits.float()
        if self.targets == "sinkhorn":
            return sinkhorn_knopp(logits, temperature, valid=valid)
        if self.targets == "none":
            return torch.softmax(logits / temperature, dim=-1)
        probs = centred_softmax(logits, centre, temperature)
        centre.copy_(updated_centre(centre, logits, self.centre_momentum, valid))
        return probs

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        if batch.get("n_views", 2) != self.declaration.views:
            raise ValueError("objective=dino needs two global crops per region: set objective.views.n_views=2")
        if self.teacher_backbone is None:
            raise RuntimeError("objective=dino has no teacher: build it with pretrain.launch.build.build_module")
        image, masks, temperature = batch["image"], batch.get("masks"), self._teacher_temperature()
        if self.ibot_head is None:
            masks = None
        elif masks is None or batch["n_masked_images"] == 0:
            raise ValueError(
                "objective.loss.ibot_weight > 0 needs masked global crops: set objective.views.masking "
                "(probability > 0), or objective.loss.ibot_weight=0 for the DINO loss alone"
            )
        with torch.no_grad():
            teacher_cls, teacher_patches = self.teacher_backbone.features(image)
            probs = self._targets(self.teacher_head(teacher_cls), self.centre, temperature)
        student_cls, student_patches = backbone.features(image, masks, self.mask_token if masks is not None else None)
        crops = list(student_cls.chunk(2))
        if batch.get("local") is not None:
            crops += list(backbone.features(batch["local"])[0].chunk(batch["n_local"]))
        logits = self.head(torch.cat(crops)).split([c.shape[0] for c in crops])
        distillation = dino_loss(list(logits), list(probs.chunk(2)), self.student_temperature)
        spread = sum(koleo(c) for c in crops[:2])  # summed over the two global crops, as DINOv2 does
        dino_w, ibot_w, koleo_w = self.weights
        loss = dino_w * distillation + koleo_w * spread
        logs = {"dino_loss": distillation.detach(), "koleo": spread.detach()}
        if masks is not None:
            hidden, valid, (rows, positions) = hidden_tokens(
                student_patches, masks, batch["n_masked_images"], batch["max_hidden"]
            )
            with torch.no_grad():
                index = positions.unsqueeze(-1).expand(-1, -1, teacher_patches.shape[-1])
                targets = teacher_patches[rows].gather(1, index)
                patch_probs = self._targets(self.teacher_ibot_head(targets), self.patch_centre, temperature, valid)
            patch_loss = ibot_loss(
                self.ibot_head(hidden), patch_probs, valid, self.student_temperature, n_images=image.shape[0]
            )
            loss = loss + ibot_w * patch_loss
            logs["ibot_loss"] = patch_loss.detach()
        if self.gram is not None and self.gram.active:
            anchored = self.gram(image, student_patches)
            loss = loss + self.gram.weight * anchored
            logs["gram_loss"] = anchored.detach()
        logs["loss"] = loss.detach()
        if batch.get("log_step", True):  # the monitors read values back: logging steps only
            features = torch.cat(crops[:2]).detach()
            mean, std = gram_off_diagonal(features)
            logs.update(
                teacher_entropy=normalised_entropy(probs),
                teacher_information=teacher_information(probs),
                effective_rank=effective_rank(features),
                gram_mean=mean,
                gram_std=std,
                teacher_temperature=temperature,
                teacher_momentum=self.last_momentum.clone(),
                far_patch_similarity=far_patch_similarity(
                    student_patches.detach(), self._grid(image), None if masks is None else ~masks
                ),
            )
            if self.gram is not None:
                logs["gram_weight"] = self.gram.weight if self.gram.active else 0.0
                logs["gram_refresh_step"] = self.gram.refreshed_at.float()  # -1: no snapshot yet
        return loss, logs

    def _grid(self, image: torch.Tensor) -> tuple[int, ...]:
        """The token grid of crops [B, C, *S]: S / patch."""
        return tuple(s // p for s, p in zip(image.shape[2:], self.patch_size))
