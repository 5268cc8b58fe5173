"""`voxfm bench loop experiment=<name> shards=<dir>`: where a training step's time goes between the step itself,
`voxfm pretrain`'s loop and its data feed, in one process, the same module build and the same batch throughout.

- (a) bare: the module's step alone (device views, objective + backbone, backward, AdamW: `pretrain/bench/model.py`)
  on one batch, moved to the device once, under the loop's autocast;
- (b) loop: `voxfm pretrain`'s Lightning fit (`build_module`, `build_trainer`) fed by its real loader on the shards;
- (c) synthetic: that fit fed the real loader's first batch forever, handed over as the loader hands batches over
  (pinned, through `data/stream/device_feed.py` on CUDA): no reads, no decoding.

They run (b), (c), (a): (a) and (c) take (b)'s first batch and (a) the loop's precision plugin. (b)/(c) is what the
feed costs, (c)/(a) what the loop adds to the step: Lightning's hooks, voxfm's callbacks and logging steps, the
non-finite check, gradient clipping, the lr schedule, the hand-over to the device. Each runs `warmup` untimed steps
(compilation, cuDNN's search and the first batch's FLOP count happen there), then `steps` timed ones in one
interval: CUDA events on a GPU, perf_counter on CPU (`pretrain/runtime/timing.py`). Samples are views, as in
`voxfm bench model`. The fits stop after their timed steps, without a final checkpoint.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.plugins.precision import MixedPrecision
from omegaconf import DictConfig, OmegaConf

from voxfm.data.stream.device_feed import DeviceFeed, PinnedBuffers
from voxfm.pretrain.bench.feed import StepWindow, TimedFeed, peak_rss_gib, reset_peak_rss
from voxfm.pretrain.bench.model import significant, voxfm_step
from voxfm.pretrain.callbacks.checkpointing import FinalCheckpoint
from voxfm.pretrain.launch.build import build_feed, build_module, build_trainer, trains_on_gpu
from voxfm.pretrain.runtime.timing import time_call, timer_name
from voxfm.pretrain.training.module import PretrainModule
from voxfm.pretrain.training.precision import view_dtype

ROWS = ("bare", "loop", "synthetic")


def real_batches(cfg: DictConfig, module: PretrainModule, on_gpu: bool) -> Iterable[dict]:
    """`voxfm pretrain`'s loader on `cfg.data`, its stream built as `pretrain.launch.run._train` builds it."""
    region_size = cfg.data.region_size or module.view_pipeline.region_size_needed()
    return build_feed(cfg.data, region_size, cfg.seed, on_gpu)


def repeated(batch: dict) -> Iterable[dict]:
    """`batch` (the real loader's first) forever, handed over as that loader hands batches over: on the host, or,
    where it delivered device batches (`data.loader=thread` on CUDA), pinned and copied one batch ahead through the
    same `DeviceFeed`."""
    if batch["region"].device.type != "cuda":
        return _forever(batch)
    host = {k: v.cpu().pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return DeviceFeed(_forever(host), PinnedBuffers(1), batch["region"].device)


def _forever(batch: dict) -> Iterator[dict]:
    while True:
        yield dict(batch)


def fit(
    cfg: DictConfig,
    run_dir: Path,
    batches: Callable[[PretrainModule], Iterable[dict]],
    warmup: int,
    steps: int,
    on_gpu: bool,
) -> tuple[dict, TimedFeed, L.Trainer]:
    """One `voxfm pretrain` fit fed by `batches(module)`, stopped after `warmup + steps` batches → (its row, the
    feed, the trainer). `on_gpu`: `trains_on_gpu(cfg.trainer)`, derived once by `bench_loop`."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg)
    feed = TimedFeed(batches(module))
    trainer = build_trainer(cfg, run_dir, OmegaConf.to_container(cfg, resolve=True), on_gpu)
    # neither is part of a step: the summary prints before the JSON line, the final checkpoint saves after the steps
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, (FinalCheckpoint, ModelSummary))]
    window = StepWindow(feed, warmup, steps)
    trainer.callbacks.append(window)
    reset_peak_rss()
    try:
        trainer.fit(module, train_dataloaders=feed)
    finally:
        feed.close()
    row = {**window.figures(cfg.data.batch_size * module.view_pipeline.n_views), "host_peak_gib": peak_rss_gib()}
    return row, feed, trainer


def _free(device: torch.device) -> None:
    gc.collect()  # a compiled module holds itself through its compiled functions: freed only by the collector
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bare_view_dtype(plugin, precision: str) -> torch.dtype:
    """The views' dtype for the bare step: training's (`view_dtype`) where autocast takes half views; fp32 for
    true-half and DeepSpeed precisions, which convert the module and the batch — what the bare step, which runs
    their module in fp32 as it is, does not."""
    return view_dtype(precision) if isinstance(plugin, MixedPrecision) else torch.float32


def bench_loop(cfg: DictConfig, warmup: int = 5, steps: int = 20) -> dict:
    """cfg: a `voxfm pretrain` config (one device; `run_dir` a scratch folder) → the figures of the three rows."""
    run_dir, on_gpu = Path(cfg.run_dir), trains_on_gpu(cfg.trainer)
    loop, feed, trainer = fit(
        cfg, run_dir / "loop", lambda module: real_batches(cfg, module, on_gpu), warmup, steps, on_gpu
    )
    batch, device, plugin = feed.first, trainer.strategy.root_device, trainer.precision_plugin
    precision = str(trainer.precision)
    del feed, trainer
    _free(device)
    synthetic, _, trainer = fit(cfg, run_dir / "synthetic", lambda _: repeated(batch), warmup, steps, on_gpu)
    del trainer
    _free(device)
    per_row = reset_peak_rss()
    dtype = bare_view_dtype(plugin, precision)
    step, _, views, _ = voxfm_step(cfg, device, plugin.forward_context, bool(cfg.trainer.compile), batch, dtype)
    seconds = time_call(step, device, warmup=warmup, steps=steps)
    bare = {
        "samples_per_s": significant(views / seconds),
        "step_ms": significant(seconds * 1e3),
        "data_wait": None,
        "shard_gb_per_s": None,
        "regions_per_read": None,
        "host_peak_gib": peak_rss_gib(),
    }
    rows = {"bare": bare, "loop": loop, "synthetic": synthetic}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision,
        "timer": timer_name(device),
        "warmup": warmup,
        "steps": steps,
        "views_per_step": views,
        "batch_size": cfg.data.batch_size,
        "crop": list(cfg.data.crop_size),
        "compile": bool(cfg.trainer.compile),
        "loader": cfg.data.loader,
        "workers": cfg.data.num_workers,
        "peak_rss_per_row": per_row,
        **rows,
        "loop_vs_bare": round(loop["samples_per_s"] / bare["samples_per_s"], 2),
        "loop_vs_synthetic": round(loop["samples_per_s"] / synthetic["samples_per_s"], 2),
        "synthetic_vs_bare": round(synthetic["samples_per_s"] / bare["samples_per_s"], 2),
    }


def _cell(value, width: int, pattern: str = "") -> str:
    return f"{'-' if value is None else format(value, pattern):>{width}}"


def format_loop_bench(result: dict, experiment: str) -> str:
    names = {
        "bare": "(a) bare step, one device batch",
        "loop": "(b) pretrain loop, real loader",
        "synthetic": "(c) pretrain loop, in-memory batch",
    }
    head = (
        f"{experiment}: {result['batch_size']} regions → {result['views_per_step']} views of {result['crop']} per "
        f"step, {result['device']}, {result['precision']}, compile={str(result['compile']).lower()}, "
        f"data.loader={result['loader']} x {result['workers']}; {result['timer']}, {result['steps']} steps after "
        f"{result['warmup']} warm-up"
    )
    lines = [
        head,
        f"  {'':<38}{'samples/s':>11}{'step ms':>9}{'vs bare':>9}{'data wait':>11}{'shard GB/s':>12}"
        f"{'regions/read':>14}{'host peak GiB':>15}",
    ]
    for name in ROWS:
        row = result[name]
        vs = round(row["samples_per_s"] / result["bare"]["samples_per_s"], 2)
        lines.append(
            f"  {names[name]:<38}{row['samples_per_s']:>11}{row['step_ms']:>9}{vs:>9}"
            f"{_cell(row['data_wait'], 11, '.1%')}{_cell(row['shard_gb_per_s'], 12)}"
            f"{_cell(row['regions_per_read'], 14)}{row['host_peak_gib']:>15}"
        )
    lines += [
        f"  loop / bare: {result['loop_vs_bare']}x samples/s = the feed (b)/(c) {result['loop_vs_synthetic']}x "
        f"x the loop around the step (c)/(a) {result['synthetic_vs_bare']}x",
        "  data wait: host time blocked on the next batch / host time of the timed steps",
        "  shard GB/s: bytes read by this process's data workers (one GPU's) / the timed seconds",
        "  host peak GiB: peak resident set during each row"
        if result["peak_rss_per_row"]
        else "  host peak GiB: the process's peak resident set so far (it cannot be reset here)",
    ]
    return "\n".join(lines)
