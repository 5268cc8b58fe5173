"""The LightningModule: orchestrates the device-side views, objective, optimiser and schedule — no model maths here."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import nn

from voxfm.data.views.counter_random import step_key
from voxfm.pretrain.errors import Diverged
from voxfm.pretrain.runtime.logging_steps import is_logging_step
from voxfm.pretrain.training.compiled_step import CompiledStep, objective_inputs
from voxfm.pretrain.training.param_groups import LAST_LAYER, param_groups
from voxfm.pretrain.training.precision import convert_views, view_dtype
from voxfm.pretrain.training.schedule import cosine, held_until, warmup_cosine


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Fused Adam(W) reads `found_inf` (float, 1.0 = skip) inside its kernel, CPU and CUDA alike (torch/optim/adam.py
    `_fused_adam`); foreach and single-tensor Adam refuse it, other optimisers ignore it. Asked of the optimiser, not
    the config: a resumed checkpoint's param groups bring their own `fused`."""
    return isinstance(optimizer, torch.optim.Adam) and all(g.get("fused") for g in optimizer.param_groups)


class PretrainModule(L.LightningModule):
    """view_pipeline: the device-side views the objective's config chooses (crops, augmentation, masks):
    `view_pipeline(batch, key, apply=None, dtype=torch.float32) -> batch` (key: the step's [STREAMS, 2] int64 keys,
    `data/views/counter_random.py`; `apply`: its own `apply`, compiled under trainer.compile; dtype: `view_dtype`).
    objective: `objective(batch, backbone) -> (loss, logs)`.
    DINOv2's optimisation recipe, each off by default: layer_decay (< 1: layer-wise lr decay,
    `pretrain/training/param_groups.py`), weight_decay_end (weight decay cosine from the optimiser's to this over
    total_steps), freeze_last_layer_steps (parameters named `last_layer` stay still for that many steps)."""

    def __init__(
        self,
        backbone: nn.Module,
        objective: nn.Module,
        view_pipeline: Callable[..., dict],
        optimizer: Callable[..., torch.optim.Optimizer],
        warmup_steps: int,
        total_steps: int,
        min_lr_factor: float = 0.01,
        seed: int = 0,
        fused: bool | None = None,
        max_nonfinite_steps: int = 10,
        compile_step: bool = False,
        compile_views: bool = False,
        layer_decay: float = 1.0,
        weight_decay_end: float | None = None,
        freeze_last_layer_steps: int = 0,
    ):
        super().__init__()
        # the whole step (pretrain/training/compiled_step.py); the views alone where the model compiles block by
        # block (DeepSpeed ZeRO-3): eager, their counter-based random numbers would cost a kernel per operation
        self.compiled = CompiledStep(compile_step or compile_views)  # the views compile under either flag
        self.compile_objective = compile_step
        self.max_nonfinite_steps = max_nonfinite_steps
        self.lr_scale = 1.0
        # non-finite steps: flags and counters stay on the device, read at logging steps (`_check_nonfinite`)
        self._loss_finite: torch.Tensor | None = None
        self._nonfinite: torch.Tensor | None = None  # see `_count_nonfinite`; made at the first step
        self._skipped_restored = 0  # from a checkpoint, until the device counters exist
        # fused (Adam)W wherever torch has the kernel (CUDA, and CPU since torch 2.4): one kernel for the update,
        # and the non-finite skip happens inside it (`found_inf`) instead of in a host-side branch
        self.fused = True if fused is None else fused
        self.backbone, self.objective, self.optimizer_factory = backbone, objective, optimizer
        self.view_pipeline = view_pipeline
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.min_lr_factor, self.seed = min_lr_factor, seed
        self.layer_decay, self.weight_decay_end = layer_decay, weight_decay_end
        self.freeze_last_layer_steps = freeze_last_layer_steps
        self._check_recipe()
        self._decay_groups: list[int] = []  # indices of the groups with weight decay, set by configure_optimizers
        self._weight_decay = 0.0  # the optimiser's own weight decay: the schedule's value at step 0

    def _check_recipe(self) -> None:
        if self.freeze_last_layer_steps < 0:
            raise ValueError(f"freeze_last_layer_steps={self.freeze_last_layer_steps}: expected an int >= 0")
        if self.freeze_last_layer_steps and not any(
            LAST_LAYER in n for n, p in self.named_parameters() if p.requires_grad
        ):
            raise ValueError(
                f"freeze_last_layer_steps={self.freeze_last_layer_steps}: no trainable parameter named "
                f"*{LAST_LAYER}* in this backbone or objective (DINO heads have one); use 0"
            )
        if self.weight_decay_end is not None and self.weight_decay_end < 0:
            raise ValueError(f"weight_decay_end={self.weight_decay_end}: expected a value >= 0 or None (constant)")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Views, augmentation and masks are drawn here, on the training device, so the objective is a pure
        function of its batch. The view pipeline makes float images from int16 regions after Lightning's own input
        conversion, in fp16 under a half precision (`view_dtype`); that conversion runs again on its output, for the
        precisions that compute without autocast (DeepSpeed's and bf16-true's bf16 weights), the image
        excepted (`convert_views`: targets are computed from it)."""
        if self.trainer.training:
            key = step_key(batch["region"].device, self.seed, self.global_step, self.global_rank, self._micro_batch())
            views = self.views(batch, key, view_dtype(str(self.trainer.precision)))
            batch = convert_views(self.trainer.precision_plugin, views, self)
            batch["log_step"] = is_logging_step(self.trainer)  # figures only logging steps need (a Python bool)
        return batch

    def _micro_batch(self) -> int:
        """Which micro-batch of an accumulated optimiser step this batch is (0 without accumulation): each gets views
        of its own. Lightning counts a batch as ready after its transfer, so the count is that of the batches
        before it; checkpoints fall on optimiser-step boundaries, where it is a multiple of the accumulation."""
        accumulate = self.trainer.accumulate_grad_batches
        if accumulate == 1:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.total.ready % accumulate

    def views(self, batch: dict, key: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict:
        """The device-side views, random numbers included (drawn from the step's `key`), images in `dtype`: one
        graph under trainer.compile, no eager kernel."""
        name = f"the views ({str(batch['region'].dtype).removeprefix('torch.')} regions)"
        return self.view_pipeline(batch, key, apply=self.compiled.wrap(name, self.view_pipeline.apply), dtype=dtype)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """objective + backbone → (loss, logs), compiled under trainer.compile (one graph per `log_step` value), except
        under ZeRO-3, whose blocks compile one by one (`compile_step` false): eager there."""
        inputs = objective_inputs(batch)
        if not self.compile_objective:
            return self._objective(inputs)
        name = "objective + backbone" + (" (logging steps)" if inputs.get("log_step", True) else "")
        return self.compiled.wrap(name, self._objective)(inputs)

    def _objective(self, inputs: dict) -> tuple[torch.Tensor, dict]:
        return self.objective(inputs, self.backbone)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """The weight decay of this step (`weight_decay_end`) on the decay groups, before its optimiser step: a
        function of the step alone, so a resumed run sets what the uninterrupted one did. A Python float: no sync."""
        if self.weight_decay_end is None:
            return
        decay = cosine(self.global_step, self._weight_decay, self.weight_decay_end, self.total_steps)
        groups = self.trainer.optimizers[0].param_groups  # DeepSpeed's optimiser shows its inner one's groups
        for i in self._decay_groups:
            groups[i]["weight_decay"] = decay
        if is_logging_step(self.trainer, batch_idx):
            self.log("train/weight_decay", decay, batch_size=1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logs = self.loss(batch)
        finite = torch.isfinite(loss.detach())  # AND over the micro-batches of one optimiser step
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        # not prog_bar: Lightning would read those values after every step (callbacks.ProgressBar shows them)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=batch["image"].shape[0])
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimiser's step, then an EMA teacher's (objectives that declare one): on every rank alike, on the
        full student weights (DDP; DeepSpeed ZeRO-2 keeps them whole on every rank, ZeRO-3 is refused)."""
        super().optimizer_step(*args, **kwargs)
        if self.objective.declaration.teacher:
            self.objective.update_teacher(self.backbone, self.total_steps)

    def on_before_optimizer_step(self, optimizer) -> None:
        """A non-finite loss on any rank skips the step on every rank, decided on the device: the flag is all-reduced
        (MAX) and fused (Adam)W gets it as `found_inf`, whose kernel then leaves weights, moments and step count
        alone. Every rank ran backward, so DDP's collectives stay matched. Other optimisers, and DeepSpeed (its
        optimiser owns the gradients), read the flag every step: one host sync per step, which drains the GPU's
        queue of launched kernels before the update (README: "No host sync between logging steps")."""
        optimizer.__dict__.pop("found_inf", None)  # a flag is for one step only
        if self._loss_finite is None:
            return
        skip = (~self._loss_finite).float()  # [], 1.0 = skip
        self._loss_finite = None
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(skip, op=torch.distributed.ReduceOp.MAX)
        self._count_nonfinite(skip)
        deepspeed = isinstance(self.trainer.strategy, DeepSpeedStrategy)
        if not deepspeed and skips_on_device(optimizer):
            optimizer.found_inf = skip
        elif bool(skip):  # the per-step read of the paths without found_inf
            if deepspeed:
                raise Diverged(
                    f"non-finite loss at step {self.global_step}: DeepSpeed cannot skip a step "
                    "here; rerun to resume from the newest checkpoint"
                )
            optimizer.zero_grad(set_to_none=True)  # the optimiser skips parameters without a gradient
        # the last step too: a run of non-finite steps at the end must stop the run before its final checkpoint
        if is_logging_step(self.trainer) or self.global_step + 1 >= self.trainer.max_steps:
            self._check_nonfinite(self.global_step, log=True)

    def _count_nonfinite(self, skip: torch.Tensor) -> None:
        """Device counters [4]: skipped steps, non-finite steps in a row, the longest such run since the last check,
        and how many steps ago that run ended. Kept without a read, so a run of `max_nonfinite_steps` that starts
        and ends between two logging steps is still caught at the next one."""
        if self._nonfinite is None:
            self._nonfinite = torch.tensor([float(self._skipped_restored), 0.0, 0.0, 0.0], device=skip.device)
        skipped, run, longest, ago = self._nonfinite.unbind()
        run = (run + skip) * skip
        self._nonfinite = torch.stack([skipped + skip, run, torch.maximum(longest, run), (ago + 1) * (run < longest)])

    def _check_nonfinite(self, step: int, log: bool = False) -> None:
        """Reads the counters (one host sync: logging steps and the end of training only), logs the skipped count
        and stops the run after `max_nonfinite_steps` non-finite steps in a row. step: the current step's index."""
        if self._nonfinite is None:
            return
        skipped, run, longest, ago = (int(v) for v in self._nonfinite.tolist())
        self._nonfinite[2], self._nonfinite[3] = run, 0  # the next check looks at runs from the current one on
        if log:
            self.log("train/skipped_steps", float(skipped), batch_size=1)
        if longest >= self.max_nonfinite_steps:
            saved = self.trainer.checkpoint_callback
            last = (saved.best_model_path or saved.last_model_path) if saved is not None else ""  # newest periodic
            last = last or "none yet"
            raise Diverged(
                f"non-finite loss at {longest} consecutive steps, the last at "
                f"step {step - ago} (trainer.max_nonfinite_steps="
                f"{self.max_nonfinite_steps}); last good checkpoint: {last}"
            )

    def on_train_end(self) -> None:
        """A non-finite run in the last steps, after the last logging step."""
        self._check_nonfinite(self.global_step - 1)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite loss over the whole run (reads the device counter: not for a hot path)."""
        return self._skipped_restored if self._nonfinite is None else int(self._nonfinite[0])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["voxfm_skipped_steps"] = self.skipped_steps  # a checkpoint copies every tensor to the host anyway

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._skipped_restored, self._nonfinite = int(checkpoint.get("voxfm_skipped_steps", 0)), None

    def configure_optimizers(self):
        """AdamW without weight decay on norms, biases, tokens and embeddings (ndim < 2 or mask tokens), as in
        MAE/DINOv2, in the groups of `param_groups` (two unless layer_decay or freeze_last_layer_steps asks for
        more); fused unless optim.fused=false or fp16. A group's base lr = optimiser lr × lr_scale × its layer
        multiplier; one LambdaLR gives every group the warm-up + cosine, a held last layer 0 before that."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        more = getattr(self.objective, "extra_backbones", list)()  # objective=distill's other students
        groups = param_groups(named, self.backbone, self.layer_decay, self.freeze_last_layer_steps > 0, more)
        extra = {"fused": True} if self._use_fused() else {}
        if self.lr_scale != 1.0:  # optim.lr_scaling, set by run_pretrain once the world size is known
            extra["lr"] = self.optimizer_factory.keywords["lr"] * self.lr_scale
        optimizer = self.optimizer_factory([g.optimizer_group() for g in groups], **extra)
        for group, spec in zip(optimizer.param_groups, groups):
            if spec.lr_mult != 1.0:  # a new value, never in place: a tensor lr is shared by every group
                group["lr"] = group["lr"] * spec.lr_mult
        self._decay_groups = [i for i, spec in enumerate(groups) if spec.decay]
        self._weight_decay = optimizer.defaults.get("weight_decay", 0.0)
        schedule = partial(
            warmup_cosine, warmup_steps=self.warmup_steps, total_steps=self.total_steps, min_factor=self.min_lr_factor
        )
        held = partial(held_until, schedule=schedule, start=self.freeze_last_layer_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [held if g.last_layer else schedule for g in groups])
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
            norm = torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], gradient_clip_val
            )
            if getattr(optimizer, "found_inf", None) is not None:  # a finite loss with overflowing gradients: skip too
                optimizer.found_inf = torch.maximum(optimizer.found_inf, (~torch.isfinite(norm)).float())
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
