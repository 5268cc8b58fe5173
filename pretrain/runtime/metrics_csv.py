"""One metrics file per run_dir, `run_dir/metrics/metrics.csv`, kept across resumes: a resumed run appends to it,
after dropping the rows a killed run logged past the checkpoint it resumes from, so the step column only grows.
(Lightning's CSVLogger starts a `version_N/` folder per process and deletes a metrics.csv it finds.)"""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from voxfm.data.ingest.safe_files import refuse_a_link, replacing


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int):
        self.metrics, self.metrics_keys, self.hparams = [], [], {}
        self.log_dir, self.metrics_file_path = log_dir, os.path.join(log_dir, self.NAME_METRICS_FILE)
        self._fs = get_filesystem(log_dir)
        os.makedirs(log_dir, exist_ok=True)
        refuse_a_link(self.metrics_file_path)  # Lightning appends to it by name
        if os.path.isfile(self.metrics_file_path):
            self._keep_rows_before(resume_step)

    def _keep_rows_before(self, step: int) -> None:
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = list(reader.fieldnames or []), list(reader)
        kept = [r for r in rows if _step(r) < step]
        self.metrics_keys = sorted(header)
        if len(kept) != len(rows):  # rewritten beside, then swapped in: a kill here leaves one whole file
            with replacing(self.metrics_file_path) as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


class RunCSVLogger(CSVLogger):
    """CSV metrics in `run_dir/metrics/metrics.csv`, appended across resumes (`resume_step`: the step resumed at)."""

    def __init__(self, run_dir: str, resume_step: int, flush_logs_every_n_steps: int):
        super().__init__(
            save_dir=run_dir, name="metrics", version="", flush_logs_every_n_steps=flush_logs_every_n_steps
        )
        self._resume_step = resume_step

    @property
    @rank_zero_experiment  # the other ranks get a no-op: one writer
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(self.log_dir, self._resume_step)
        return self._experiment
