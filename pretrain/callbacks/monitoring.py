"""Monitoring callbacks, all reading at logging steps only: throughput (`Throughput`), the progress bar
(`ProgressBar`) and the data actually seen (`DataStats`: skipped samples, modality and source mix)."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from voxfm.pretrain.runtime.logging_steps import is_logging_step


class Throughput(L.Callback):
    """Logs samples/s over all ranks at logging steps: the regions of the steps since the previous logging step over
    the host time between their batch starts (includes data wait). A float logged every step would cost a
    host-to-device copy each time; Lightning writes only logging steps anyway."""

    def __init__(self):
        self._since, self._samples = None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self._since is not None and is_logging_step(trainer, batch_idx):
            pl_module.log("train/samples_per_s", self._samples / (now - self._since), batch_size=1)
            self._since, self._samples = now, 0
        elif self._since is None:
            self._since = now
        self._samples += len(batch["modality"]) * trainer.world_size  # regions (a two-view sample counts once)


class ProgressBar(TQDMProgressBar):
    """TQDM refreshed at logging steps only, showing the `train/` metrics. Lightning turns every `prog_bar=True`
    metric into a Python number after *every* step (a host sync each, logging step or not), so voxfm logs none with
    `prog_bar` and the bar reads the logged values itself when it refreshes. batch_idx counts micro-batches, so
    the refresh rate is log_every_n_steps x accumulate_grad_batches: the last micro-batch of each logging step."""

    def __init__(self, log_every_n_steps: int, accumulate_grad_batches: int = 1):
        super().__init__(refresh_rate=log_every_n_steps * accumulate_grad_batches)

    def get_metrics(self, trainer, pl_module) -> dict:
        shown = super().get_metrics(trainer, pl_module)
        shown.pop("v_num", None)  # the logger's version: no news at every refresh
        for name, value in trainer.callback_metrics.items():
            if name.startswith("train/"):
                shown[name.removeprefix("train/")] = float(value)
        if shown.get("skipped_steps") == 0:  # shown once there is something to say
            del shown["skipped_steps"]
        return shown

    def on_train_start(self, trainer, *_) -> None:
        super().on_train_start(trainer, *_)
        self._count_steps(trainer)  # a run resumed mid-epoch gets no epoch start

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer, *_)
        self._count_steps(trainer)

    def _count_steps(self, trainer) -> None:
        """The bar counts optimizer steps out of `trainer.max_steps`, from the step a resumed run starts at: its rate
        and ETA are this process's, not inflated by the restored steps."""
        bar, step = self.train_progress_bar, trainer.global_step
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        bar.initial = bar.n = bar.last_print_n = step
        bar.set_description("step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if self.train_progress_bar is None or not (self._should_update(batch_idx + 1, None) or done):
            return
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


class DataStats(L.Callback):
    """Logs the damaged data skipped so far (`data/skipped_samples`, this rank), the realised share of regions per
    modality (`data/modality/<CT|MR|PET>`) and, with several sources, per source (`data/mix/<name>`), and the feed's
    figures since the last window with a read: shard bytes read per region (`data/shard_mb_per_region`), regions
    per volume read (`data/regions_per_read`); and distinct volumes per batch (`data/distinct_volumes`, mean since
    the last logging step); prints the skipped count at the end. Counts every step from the batch's Python bookkeeping
    (`collate_regions`: source, modality, worker, skipped, volumes, read counters), logs at logging steps only."""

    def __init__(self, source_names: list[str]):
        self.names = source_names
        self.counts = [0] * len(source_names)
        self.modalities: dict[str, int] = {}
        self.skipped: dict[int, int] = {}
        self.read: dict[int, tuple[int, int]] = {}  # worker → (shard bytes, samples) read so far
        self.regions = 0
        self.mark = (0, 0, 0)  # (shard bytes, samples read, regions) at the last logged window
        self.distinct: list[int] = []

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if "source" not in batch:
            return
        for i in batch["source"]:
            self.counts[i] += 1
        for m in batch["modality"]:
            self.modalities[m] = self.modalities.get(m, 0) + 1
        worker = batch["worker"]
        self.skipped[worker] = max(self.skipped.get(worker, 0), batch["skipped"])
        if "reads" in batch:
            self.read[worker] = max(self.read.get(worker, (0, 0)), (batch["read_bytes"], batch["reads"]))
            self.regions += len(batch["source"])
            self.distinct.append(batch["volumes"])
        if not is_logging_step(trainer):
            return
        pl_module.log("data/skipped_samples", float(self.total_skipped), batch_size=1)
        if self.distinct:
            read_bytes, reads = (sum(v) for v in zip(*self.read.values()))
            last_bytes, last_reads, last_regions = self.mark
            regions = self.regions - last_regions
            if reads > last_reads:  # since the last logging step (the first window includes the pool's first fill)
                pl_module.log("data/shard_mb_per_region", (read_bytes - last_bytes) / regions / 1e6, batch_size=1)
                pl_module.log("data/regions_per_read", regions / (reads - last_reads), batch_size=1)
                self.mark = (read_bytes, reads, self.regions)
            pl_module.log("data/distinct_volumes", sum(self.distinct) / len(self.distinct), batch_size=1)
            self.distinct = []
        for m, count in self.modalities.items():
            pl_module.log(f"data/modality/{m}", count / sum(self.modalities.values()), batch_size=1)
        if len(self.names) > 1:
            total = sum(self.counts)
            for name, count in zip(self.names, self.counts):
                pl_module.log(f"data/mix/{name}", count / total, batch_size=1)

    def on_train_end(self, trainer, pl_module):
        if self.total_skipped:
            print(
                f"voxfm: rank {trainer.global_rank} skipped {self.total_skipped} damaged shard read(s) or "
                "sample(s) (warnings above; data/skipped_samples in the metrics)",
                flush=True,
            )
