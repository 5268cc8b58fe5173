"""Process-group teardown at the end of a run: the function voxfm's own code calls, and the callback that
does it inside every rank (ddp_spawn children included)."""

from __future__ import annotations

import lightning as L
import torch


def shut_down_process_group() -> None:
    """A process group left to interpreter exit can abort the process after a finished run ("terminate called
    without an active exception", SIGABRT: seen on a torchrun rank and on a ddp_spawn child): shut it down first."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class ShutDownProcessGroup(L.Callback):
    """At the end of `fit`, in every rank: ddp_spawn's children never return to voxfm's own code to do it."""

    def teardown(self, trainer, pl_module, stage):
        shut_down_process_group()
