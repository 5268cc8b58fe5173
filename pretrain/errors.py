"""Why a run stops early, as exceptions the CLI maps to exit codes (README: "Exit codes"). No heavy imports:
the CLI loads this before torch."""

from __future__ import annotations

import signal
from pathlib import Path

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped on purpose with its state on disk; the same command resumes


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
