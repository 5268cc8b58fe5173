"""A quiet start: only voxfm's own lines and real warnings. Lightning's banner lines (accelerators found, a
product tip, the checkpoint it restores, why fit stopped) and known third-party noise are filtered here, in one
place; voxfm says the same things its own way (`voxfm: resuming from ...`, `voxfm: finished at step ...`)."""

from __future__ import annotations

import logging
import warnings

BANNERS = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip",
    "Tip:",
    "Restoring states from the checkpoint path",
    "Restored all states from the checkpoint",
    "`Trainer.fit` stopped:",
    "You are using a CUDA device",  # its tf32 advice: voxfm sets matmul precision itself
)
WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's _pytree on torch >= 2.9
    r"Checkpoint directory .* exists and is not empty",  # a resume writes there on purpose
    r"The `srun` command is available on your system but is not used",
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",  # a changed cadence: free
    r"bf16 and fp16 are mixed in the scheduler node",  # inductor on a CPU: fp16 views meet a bf16 autocast graph
)


class _Banners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(BANNERS)


def quiet_start() -> None:
    """Idempotent: the filters are installed once per process."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _Banners) for f in log.filters):
            log.addFilter(_Banners())
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def model_line(module) -> str:
    """One line for Lightning's model-summary table: parameters per top-level part."""
    parts = [(name, type(child).__name__, sum(p.numel() for p in child.parameters())) for name, child in
             module.named_children()]  # fmt: skip
    total = sum(p.numel() for p in module.parameters())
    shown = ", ".join(f"{name} {cls} {_count(n)}" for name, cls, n in parts if n)
    return f"model: {shown} ({_count(total)} parameters in all)"


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)
