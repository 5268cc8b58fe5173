"""Why a run stops early, as exceptions the CLI maps to exit codes (README: "Exit codes"). No heavy imports:
the CLI loads this before torch."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# data/ does not import pretrain/; its lock and link errors are mapped here
from voxfm.data.ingest.locks import FolderLocked, FolderUnwritable
from voxfm.data.ingest.safe_files import LinkRefused
from voxfm.data.stream.skips import UnreadableShards

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped on purpose with its state on disk; the same command resumes
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: Ctrl-C, checkpointed; the same command resumes


class ConfigError(ValueError):
    """The configuration asks for something impossible or unknown (a key, a value, a combination, a missing
    package or file). Raised by voxfm's own checks; the CLI prints it in one line and exits 2. A `ValueError` from
    numpy or torch during training is not one of these: it is a crash, with its traceback."""


class Diverged(FloatingPointError):
    """The loss (or the gradients) stayed non-finite for `trainer.max_nonfinite_steps` steps, or DeepSpeed met a
    non-finite loss it cannot skip; the CLI exits 3."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only, quota); earlier checkpoints are untouched."""


class UnreadableCheckpoints(Exception):
    """A run_dir holds checkpoints (or a record of progress) and none can be read: the run is refused rather than
    started again from step 0 over them."""


class OutputWriteError(OSError):
    """`voxfm shard` could not write its output (disk full, read-only, quota); shards published before are kept
    and the same command, rerun, continues from them."""


class Preempted(Exception):
    """Raised by `run_pretrain` after a signal-triggered checkpoint; the CLI turns it into exit code 75."""

    def __init__(self, step: int, signum: int, checkpoint: Path):
        self.step, self.signum, self.checkpoint = step, signum, checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}; "
            "rerun the same command to resume"
        )


class Interrupted(Preempted):
    """Ctrl-C (SIGINT) during training: checkpointed at that step as SIGTERM is, exit 130 (128 + SIGINT: the shell's
    convention for a run the user stopped)."""


# The one table of exit codes (README.md, "Exit codes", says the same): exception → (code, the words before its
# message). An exception maps through its first class (in method resolution order) in the table; any other
# exception is a crash: its traceback, exit 1.
EXIT_CODES: dict[type[BaseException], tuple[int, str]] = {
    ConfigError: (2, "error"),
    FolderLocked: (2, "error"),  # another voxfm job holds run_dir (or a shard set's output)
    LinkRefused: (2, "error"),  # a file voxfm writes in place (lock, events.jsonl, metrics.csv) is a link
    UnreadableShards: (2, "error"),  # a shard set with nothing usable: only damaged data, or no sample at all
    Diverged: (3, "training diverged"),
    CheckpointWriteError: (4, "error"),
    UnreadableCheckpoints: (4, "error"),
    OutputWriteError: (4, "error"),
    FolderUnwritable: (4, "error"),  # run_dir or output where even the lock cannot be written
    Interrupted: (INTERRUPTED_EXIT_CODE, ""),
    Preempted: (PREEMPTED_EXIT_CODE, ""),
}


def exit_code(err: BaseException) -> tuple[int, str] | None:
    """(exit code, words before the message) for an exception the CLI reports in one line; None for a crash."""
    for cls in type(err).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return None


@contextmanager
def config_errors() -> Iterator[None]:
    """Around building from the user's config — a call into data/ (which does not import pretrain/), a constructor
    named by the config, weights loaded into a network: a ValueError there is about that config, so it leaves as a
    ConfigError (also when Hydra's `instantiate` wrapped it)."""
    try:
        yield
    except ValueError as err:
        if isinstance(err, (ConfigError, FolderLocked)):
            raise
        raise ConfigError(str(err)) from err
    except Exception as err:  # Hydra's `instantiate` wraps a constructor's ValueError in an InstantiationException
        if isinstance(err.__cause__, ValueError) and type(err).__name__ == "InstantiationException":
            raise ConfigError(str(err.__cause__)) from err
        raise
