"""The LightningModule: orchestrates the device stage, objective, optimiser and schedule — no model maths here."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import nn

from pretrain.schedule import warmup_cosine


def step_generator(device: torch.device, seed: int, step: int, rank: int) -> torch.Generator:
    """A generator that is a pure function of (seed, step, rank): views and masks replay exactly after a resume."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
    return g



class PretrainModule(L.LightningModule):
    """stage: the device-side batch stage the objective's config chooses (views, augmentation, masks):
    `stage(batch, generator) -> batch`. objective: `objective(batch, backbone) -> (loss, logs)`."""

    def __init__(self, backbone: nn.Module, objective: nn.Module, stage: Callable[[dict, torch.Generator], dict],
                 optimizer: Callable[..., torch.optim.Optimizer], warmup_steps: int, total_steps: int,
                 min_lr_factor: float = 0.01, seed: int = 0, fused: bool | None = None,
                 max_nonfinite_steps: int = 10):
        super().__init__()
        self.max_nonfinite_steps = max_nonfinite_steps
        self.lr_scale = 1.0
        self.skipped_steps, self._skipped_in_a_row, self._loss_finite = 0, 0, None
        self.fused = torch.cuda.is_available() if fused is None else fused
        self.backbone, self.objective, self.stage, self.optimizer_factory = backbone, objective, stage, optimizer
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.min_lr_factor, self.seed = min_lr_factor, seed

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Views, augmentation and masks are drawn here, on the training device, so the objective is a pure
        function of its batch. The stage makes float images from int16 regions after Lightning's own input
        conversion, so that conversion runs again on its output: DeepSpeed bf16 keeps bf16 weights and takes
        bf16 inputs (under autocast, the DDP case, the conversion changes nothing)."""
        if self.trainer.training:
            g = step_generator(batch["region"].device, self.seed, self.global_step, self.global_rank)
            batch = self.trainer.precision_plugin.convert_input(self.stage(batch, g))
        return batch

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logs = self.objective(batch, self.backbone)
        self._loss_finite = torch.isfinite(loss.detach())
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """A non-finite loss on any rank: every rank drops its gradients, so the step updates nothing (AdamW skips
        parameters without a gradient). Every rank ran backward, so DDP's collectives stay matched."""
        finite = self._loss_finite is None or bool(self._loss_finite)
        if not self.trainer.strategy.reduce_boolean_decision(not finite, all=False):
            self._skipped_in_a_row = 0
            return
        if isinstance(self.trainer.strategy, DeepSpeedStrategy):  # its optimiser keeps its own gradients
            raise FloatingPointError(f"non-finite loss at step {self.global_step}: DeepSpeed cannot skip a step "
                                     "here; rerun to resume from the newest checkpoint")
        self.skipped_steps += 1
        self._skipped_in_a_row += 1
        optimizer.zero_grad(set_to_none=True)
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=1)
        if self._skipped_in_a_row >= self.max_nonfinite_steps:
            saved = self.trainer.checkpoint_callback
            last = (saved.best_model_path or saved.last_model_path) if saved is not None else ""  # newest periodic
            last = last or "none yet"
            raise FloatingPointError(f"non-finite loss at {self._skipped_in_a_row} consecutive steps, the last at "
                                     f"step {self.global_step} (trainer.max_nonfinite_steps="
                                     f"{self.max_nonfinite_steps}); last good checkpoint: {last}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["voxfm_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_steps = int(checkpoint.get("voxfm_skipped_steps", 0))

    def configure_optimizers(self):
        """AdamW without weight decay on norms, biases, tokens and embeddings (ndim < 2 or mask tokens),
        as in MAE/DINOv2; fused on CUDA."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        no_decay = [p for n, p in named if p.ndim < 2 or "mask_token" in n]
        decay = [p for n, p in named if not (p.ndim < 2 or "mask_token" in n)]
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        extra = {"fused": True} if self._use_fused() else {}
        if self.lr_scale != 1.0:  # optim.lr_scaling, set by run_pretrain once the world size is known
            extra["lr"] = self.optimizer_factory.keywords["lr"] * self.lr_scale
        optimizer = self.optimizer_factory(groups, **extra)
        schedule = partial(warmup_cosine, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                           min_factor=self.min_lr_factor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _use_fused(self) -> bool:
        """Fused (Adam)W: one kernel for the whole update. Not with fp16's gradient scaler."""
        adam = getattr(self.optimizer_factory, "func", None) in (torch.optim.AdamW, torch.optim.Adam)
        fp16 = self._trainer is not None and str(self.trainer.precision).startswith("16")
        return self.fused and adam and not fp16

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning refuses to clip for a fused optimiser under mixed precision, because with fp16 the optimiser
        unscales gradients itself. bf16 has no scaler, so the gradients are already true: clip them directly."""
        if gradient_clip_val and self._use_fused():
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"gradient_clip_algorithm={gradient_clip_algorithm}: fused AdamW clips by norm")
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
