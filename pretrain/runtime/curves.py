"""A run's metric curves as a picture: every logged `train/` metric (and the learning rate) against the step, one
panel each, several runs side by side in one colour each. `run_dir/metrics.png` is redrawn during training
(`MetricCurves`); `voxfm plot run_dir=[a,b]` draws any runs."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import lightning as L

from voxfm.data.ingest.safe_files import replacing
from voxfm.pretrain.runtime.logging_steps import is_logging_step

REDRAW_SECONDS = 30.0  # at most this often during training (a redraw costs ~0.3 s of the main process)


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value)]} of run_dir/metrics/metrics.csv: train/*, lr-* and data/* columns, blanks skipped."""
    path = Path(run_dir) / "metrics" / "metrics.csv"
    if not path.is_file():
        raise ValueError(f"run_dir={run_dir}: no metrics/metrics.csv (a voxfm pretrain run_dir that has logged)")
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key != "step" and value not in (None, "") and key.startswith(("train/", "lr-", "data/")):
                    try:
                        series.setdefault(key, []).append((step, float(value)))
                    except ValueError:
                        continue
    return series


def plot_runs(run_dirs: list[Path], output: Path) -> Path:
    """One PNG of every metric the runs logged (a panel per metric, a line per run), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {Path(d).name or str(d): read_metrics(Path(d)) for d in run_dirs}
    names = sorted({m for series in runs.values() for m in series}, key=lambda m: (not m.startswith("train/loss"), m))
    if not names:
        raise ValueError(f"run_dir={[str(d) for d in run_dirs]}: nothing logged yet")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for run, series in runs.items():
            if name in series:
                steps, values = zip(*series[name])
                ax.plot(steps, values, label=run, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    with replacing(output, "wb") as f:
        fig.savefig(f, dpi=90, format="png")
    plt.close(fig)
    return output


class MetricCurves(L.Callback):
    """run_dir/metrics.png: redrawn at logging steps (at most every REDRAW_SECONDS) and at the end, on rank 0."""

    def __init__(self, run_dir: Path):
        self.run_dir, self._drawn = Path(run_dir), None

    def _draw(self, trainer) -> None:
        for logger in trainer.loggers:  # what is logged so far reaches the file first
            logger.save()
        try:
            plot_runs([self.run_dir], self.run_dir / "metrics.png")
        except ValueError:  # nothing logged yet
            return
        self._drawn = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_global_zero or not is_logging_step(trainer, batch_idx):
            return
        if self._drawn is None or time.monotonic() - self._drawn >= REDRAW_SECONDS:
            self._draw(trainer)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self._draw(trainer)
