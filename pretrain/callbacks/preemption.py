"""Preemption: SIGTERM or SIGUSR1 → a checkpoint at the next step boundary, a clean exit, a SLURM requeue. Ctrl-C
(SIGINT) does the same (exit 130, no requeue: the user stopped it); a second Ctrl-C stops at once.

Exit code `pretrain.errors.PREEMPTED_EXIT_CODE` (75, EX_TEMPFAIL: "try again") tells a launcher that the run stopped on
purpose with its state on disk: the same command resumes from that step. A single process checks its flag every
step (a Python value). Several ranks agree on the stop through a boolean all-reduce, so all of them save the same
step (collective for DeepSpeed too); reading its result is a host sync, so they decide at logging steps only: a
preempted multi-rank job stops within `trainer.log_every_n_steps` steps (keep the signal's grace time above that).
Lightning's own handling is replaced: it raises at the next step without a checkpoint, and its SLURM
auto-requeue (switched off in `build_trainer`) would write a second, differently named checkpoint.
Before the first step (the first batch is fetched before `on_train_start`: a slow or empty data source) there is
nothing new to save: a signal then stops the run at once, with the same exit code; its checkpoints are those on
disk already.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import lightning as L

from voxfm.pretrain.errors import Interrupted, Preempted
from voxfm.pretrain.runtime.logging_steps import is_logging_step

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def requeue_slurm_job() -> str | None:
    """`scontrol requeue` this job (array task aware); returns what happened, None outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return None
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if shutil.which("scontrol") is None:
        return f"SLURM job {job}: scontrol not found, not requeued"
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode == 0:
        return f"SLURM job {job} requeued"
    return f"requeue of {job} failed: {result.stderr.strip()}"


class Preemption(L.Callback):
    def __init__(self, checkpoint_dir: Path, on_event=None):
        self.checkpoint_dir, self.on_event = Path(checkpoint_dir), on_event
        self.received: int | None = None
        self.result: Preempted | None = None
        self._previous: dict = {}
        self._step: int | None = None  # the step training started at; None while the first batch is fetched
        self._start_step = 0

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: at once, without the checkpoint
        if self._step is None:  # no step has run: nothing to save, stop now (a data wait may never end)
            self.received = signum
            raise (Interrupted if signum == signal.SIGINT else Preempted)(
                self._start_step, signum, "none new: stopped before its first step"
            )
        if signum == signal.SIGINT and self.received is None:
            print("\nCtrl-C: saving a checkpoint at the end of this step (Ctrl-C again stops at once)", file=sys.stderr)
        self.received = signum

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                previous = signal.signal(signum, self._handler)
                self._previous.setdefault(signum, previous)

    def on_fit_start(self, trainer, pl_module):
        # before the first batch is fetched; Lightning then composes its own SIGTERM notice with this handler
        self._start_step, self._step = trainer.global_step, None
        self._install()

    def on_train_start(self, trainer, pl_module):
        # after Lightning registered its handlers, so these replace them for the training loop
        self._step = trainer.global_step
        self._install()
        if threading.current_thread() is threading.main_thread():
            self._drop_lightning_sigterm_broadcast(trainer)

    def _drop_lightning_sigterm_broadcast(self, trainer) -> None:
        """With several ranks, Lightning (2.5+) broadcasts its own SIGTERM flag before every step and reads it: a
        collective and a host sync per step. Its handler, the only thing that sets the flag, is replaced above, so
        the broadcast is dropped; a SIGTERM Lightning caught before now is taken over."""
        loop = trainer.fit_loop.epoch_loop
        if trainer.world_size > 1 and hasattr(loop, "_broadcast_sigterm_tensor"):
            if getattr(trainer, "received_sigterm", False):
                self.received = signal.SIGTERM
            loop._broadcast_sigterm_tensor = lambda: None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.world_size == 1:
            stop = self.received is not None
        else:  # every rank reaches the same logging steps, so the collectives match
            stop = is_logging_step(trainer, batch_idx) and trainer.strategy.reduce_boolean_decision(
                self.received is not None, all=False
            )
        if not stop:
            return
        step = trainer.global_step
        path = self.checkpoint_dir / f"step{step:06d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        signum = self.received if self.received is not None else signal.SIGTERM
        self.result = (Interrupted if signum == signal.SIGINT else Preempted)(step, signum, path)
        trainer.should_stop = True
        if trainer.is_global_zero:
            requeue = requeue_slurm_job() if signum != signal.SIGINT else None
            if self.on_event is not None:
                self.on_event(
                    event="preempted",
                    step=step,
                    signal=signal.Signals(signum).name,
                    checkpoint=str(path),
                    requeue=requeue,
                )

    def on_exception(self, trainer, pl_module, exception):
        self.on_train_end(trainer, pl_module)  # the process's own handlers back, however the fit ended

    def on_train_end(self, trainer, pl_module):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
