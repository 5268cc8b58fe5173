"""The collapse alarm: at logging steps, the monitors a self-distillation objective logs (`objectives/dino/monitors.py`)
against their thresholds; a monitor past its threshold for `patience` logging steps in a row is reported once (a
line, an event in events.jsonl) and, with `stop`, ends the run as diverged (exit 3) naming it. Objectives that log
no monitor are left alone."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L

from voxfm.pretrain.errors import Diverged
from voxfm.pretrain.runtime.logging_steps import is_logging_step

MEANINGS = {  # monitor → what its breach means
    "train/teacher_entropy": "< {min_teacher_entropy}: the teacher picks one prototype for everything",
    "train/teacher_information": "< {min_teacher_information}: the teacher gives every input the same distribution",
    "train/effective_rank": "< {min_effective_rank}: the features span one direction",
    "train/gram_mean": ">= {max_gram_mean} with std <= {max_gram_std}: every feature alike",
}


class CollapseAlarm(L.Callback):
    def __init__(
        self,
        patience: int = 3,
        stop: bool = False,
        min_teacher_entropy: float = 0.1,
        min_teacher_information: float = 1e-4,
        min_effective_rank: float = 2.0,
        max_gram_mean: float = 0.995,
        max_gram_std: float = 0.01,
        on_event: Callable[..., None] | None = None,
    ):
        self.patience, self.stop, self.on_event = patience, stop, on_event
        self.limits = {
            "min_teacher_entropy": min_teacher_entropy,
            "min_teacher_information": min_teacher_information,
            "min_effective_rank": min_effective_rank,
            "max_gram_mean": max_gram_mean,
            "max_gram_std": max_gram_std,
        }  # plain data: the callback is pickled under ddp_spawn
        self.in_a_row = dict.fromkeys(MEANINGS, 0)

    def breached(self, name: str, m: dict) -> bool:
        lim = self.limits
        if name == "train/teacher_entropy":
            return m[name] < lim["min_teacher_entropy"]
        if name == "train/teacher_information":
            return m[name] < lim["min_teacher_information"]
        if name == "train/effective_rank":
            return m[name] < lim["min_effective_rank"]
        return m[name] >= lim["max_gram_mean"] and m["train/gram_std"] <= lim["max_gram_std"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not is_logging_step(trainer):
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        for name, meaning in MEANINGS.items():
            if name not in metrics or (name == "train/gram_mean" and "train/gram_std" not in metrics):
                continue
            self.in_a_row[name] = self.in_a_row[name] + 1 if self.breached(name, metrics) else 0
            if self.in_a_row[name] != self.patience:
                continue
            message = (
                f"collapse: {name}={metrics[name]:.4g} {meaning.format(**self.limits)}, for {self.patience} "
                f"logging steps in a row (step {trainer.global_step})"
            )
            if trainer.is_global_zero:
                print(f"voxfm: warning: {message}", flush=True)
                if self.on_event is not None:
                    self.on_event(event="collapse", step=trainer.global_step, monitor=name, value=metrics[name])
            if self.stop:
                raise Diverged(f"{message}; callbacks.collapse.stop=true ended the run")
