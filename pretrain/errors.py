"""Why a run stops early, as exceptions the CLI maps to exit codes (README: "Exit codes"). No heavy imports:
the CLI loads this before torch."""

from __future__ import annotations

import signal
from pathlib import Path

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped on purpose with its state on disk; the same command resumes


class ConfigError(ValueError):
    """The configuration asks for something impossible or unknown (a key, a value, a combination, a missing
    package or file). Raised by voxfm's own checks; the CLI prints it in one line and exits 2. A `ValueError` from
    numpy or torch during training is not one of these: it is a crash, with its traceback."""


class Diverged(FloatingPointError):
    """The loss (or the gradients) stayed non-finite for `trainer.max_nonfinite_steps` steps, or DeepSpeed met a
    non-finite loss it cannot skip; the CLI exits 3."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only, quota); earlier checkpoints are untouched."""


class OutputWriteError(OSError):
    """`voxfm shard` could not write its output (disk full, read-only, quota); shards published before are kept
    and the same command, rerun, continues from them."""


class Preempted(Exception):
    """Raised by `run_pretrain` after a signal-triggered checkpoint; the CLI turns it into exit code 75."""

    def __init__(self, step: int, signum: int, checkpoint: Path):
        self.step, self.signum, self.checkpoint = step, signum, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}; "
                         "rerun the same command to resume")
