"""`voxfm bench model experiment=<name> predict=<h100|h200> [gpus=N]`: a GPU's step time, samples/s and MFU for a
recipe, predicted on the CPU (no GPU needed), and the GPU-hours of its `trainer.max_steps`.

The step is the bench's own (`voxfm_step`: views, objective + backbone, backward, AdamW), eager, counted by
`pretrain/bench/count.py` at the recipe's shapes at batches 2 and 4 and put on the line through them. It runs in
fp32 without autocast and counts every floating tensor at 2 bytes: a bf16 step's activations (autocast's fp32
LayerNorm/softmax outputs and weight casts are not told apart; counting under CPU autocast, whose op lists are not
CUDA's, fit the rows worse: 20% leave-one-out against 13%). That is also how MONAI's MAE ran on the GPU (bf16
weights: it fails under autocast).

The roofline (`pretrain/bench/roofline.py`) turns the work into time with efficiencies fitted on every measured
GPU step: least squares in relative error, each efficiency at most 1, the launch cost at least 0; its error is the
leave-one-out error over those rows. It predicts the eager step the rows measured: compiling fuses much of what the
memory term and the launches count, and no compiled step has been measured on a GPU to fit that on. An H100's
prediction is the H200's efficiencies at the H100's peaks: no H100 row checks it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import itertools

import numpy as np
import torch
from omegaconf import OmegaConf

from voxfm.pretrain.bench.count import StepCounter, Work, at_batch
from voxfm.pretrain.bench.model import significant, voxfm_step
from voxfm.pretrain.bench.reference import reference_step
from voxfm.pretrain.bench.roofline import CALIBRATION, CARDS, EFFICIENCY, Card, Efficiency, Row

COUNT_BATCHES = (2, 4)
TERMS = ("gemm", "conv", "attention", "memory", "launches")


def _fused_as_on_cuda(step) -> None:
    """reference.py builds MONAI's AdamW fused on CUDA only: the CPU count takes the GPU's one kernel per group."""
    optimizer = inspect.getclosurevars(step).nonlocals.get("optimizer")
    for group in getattr(optimizer, "param_groups", ()):
        group.update(fused=True, foreach=False)


def count_work(cfg, reference: bool = False) -> tuple[Work, int, str] | None:
    """→ (the work of one step at `data.batch_size`, views per step, whose step) of voxfm's eager step, or of
    MONAI's reference beside it (None where there is none); counted at COUNT_BATCHES and extrapolated."""
    cpu, counts = torch.device("cpu"), []
    for b in COUNT_BATCHES:
        small = copy.deepcopy(cfg)
        OmegaConf.update(small, "data.batch_size", b)
        with StepCounter() as counter:  # built under the counter too: initialisation is not computed either
            step, _, views, module = voxfm_step(small, cpu, contextlib.nullcontext, False)
            who = "voxfm"
            if reference:
                lr = float(small.optim.optimizer.lr)
                step, who, _ = reference_step(module, lr, cpu, contextlib.nullcontext, views)
                if step is None:
                    return None
                _fused_as_on_cuda(step)
            counts.append(counter.count(step, float_bytes=2))
    batch = int(cfg.data.batch_size)
    return at_batch(*counts, *COUNT_BATCHES, batch), views // COUNT_BATCHES[-1] * batch, who


def _unit_seconds(work: Work, card: Card) -> np.ndarray:
    """Seconds per term at efficiency 1 and launch cost 1 µs: the roofline is this dotted with 1 / efficiencies."""
    peak, bandwidth = card.peak_tflops * 1e12, card.hbm_tb_s * 1e12
    return np.array(
        [work.gemm_flop / peak, work.conv_flop / peak, work.attention_flop / peak, work.bytes / bandwidth]
        + [work.launches * 1e-6]
    )


def _inverse(eff: Efficiency) -> np.ndarray:
    return np.array([1 / eff.gemm, 1 / eff.conv, 1 / eff.attention, 1 / eff.memory, eff.launch_us])


def row_work(row: Row) -> Work:
    return Work(
        row.gemm_tflop * 1e12, row.conv_tflop * 1e12, row.attention_tflop * 1e12, row.gbytes * 1e9, row.launches
    )


def step_ms(work: Work, card: Card, eff: Efficiency = EFFICIENCY) -> dict[str, float]:
    """→ milliseconds per term of the roofline (TERMS), and their sum under "step"."""
    terms = dict(zip(TERMS, _unit_seconds(work, card) * _inverse(eff) * 1e3))
    return {**terms, "step": sum(terms.values())}


def fit(rows: tuple[Row, ...]) -> Efficiency:
    """The efficiencies that minimise the rows' squared relative error: a bounded linear least squares in the
    inverse efficiencies (each ≥ 1) and the launch cost (≥ 0), solved exactly over the 2⁵ sets of free terms."""
    a = np.stack([_unit_seconds(row_work(r), CARDS[r.card]) / (r.step_ms / 1e3) for r in rows])
    low = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    target = np.ones(len(rows)) - a @ low
    best, best_x = np.inf, np.zeros(len(low))
    for k in range(len(low) + 1):
        for free in map(list, itertools.combinations(range(len(low)), k)):
            x = np.zeros(len(low))
            if free:
                x[free] = np.linalg.lstsq(a[:, free], target, rcond=None)[0]
            residual = float(((a @ x - target) ** 2).sum())
            if (x >= 0).all() and residual < best:
                best, best_x = residual, x
    g, c, at, m, launch_us = (float(v) for v in best_x + low)
    return Efficiency(1 / g, 1 / c, 1 / at, 1 / m, launch_us)


def leave_one_out(rows: tuple[Row, ...] = CALIBRATION) -> list[tuple[Row, float]]:
    """→ (row, predicted / measured − 1) for each row, predicted by the fit of the others."""
    out = []
    for i, row in enumerate(rows):
        eff = fit(rows[:i] + rows[i + 1 :])
        out.append((row, step_ms(row_work(row), CARDS[row.card], eff)["step"] / row.step_ms - 1))
    return out


def calibration_error(rows: tuple[Row, ...] = CALIBRATION) -> dict:
    errors = leave_one_out(rows)
    worst_row, worst = max(errors, key=lambda e: abs(e[1]))
    return {
        "rows": len(rows),
        "mean_abs": round(float(np.mean([abs(e) for _, e in errors])), 3),
        "rms": round(float(np.sqrt(np.mean([e * e for _, e in errors]))), 3),
        "max_abs": round(abs(float(worst)), 3),
        "worst": f"{worst_row.who} {worst_row.experiment} {' '.join(worst_row.overrides)}".strip(),
    }


def predict(cfg, card: str, gpus: int = 8) -> dict:
    """→ the predicted step of `cfg`'s recipe on `card` (a CARDS key), and `trainer.max_steps` on `gpus` GPUs,
    each taking `data.batch_size` per step (data parallel; gradient all-reduce and data loading not modelled)."""
    if card not in CARDS:
        raise ValueError(f"predict={card!r}: expected one of {', '.join(CARDS)}")
    spec = CARDS[card]
    work, views, _ = count_work(cfg)
    ms = step_ms(work, spec)
    seconds = ms["step"] / 1e3
    hours = int(cfg.trainer.max_steps) * seconds / 3600
    return {
        "card": spec.name,
        "batch_size": int(cfg.data.batch_size),
        "views_per_step": views,
        "step_ms": significant(ms["step"]),
        "samples_per_s": significant(views / seconds),
        "tflop_per_step": significant(work.flop / 1e12),
        "mfu": significant(work.flop / seconds / (spec.matmul_ceiling_tflops * 1e12)),
        "matmul_ceiling_tflop_per_s": spec.matmul_ceiling_tflops,
        "breakdown_ms": {k: significant(ms[k]) for k in TERMS},
        "work": {"gb": significant(work.bytes / 1e9), "launches": int(work.launches)},
        "compiled_recipe": bool(cfg.trainer.get("compile", False)),
        "max_steps": int(cfg.trainer.max_steps),
        "gpus": gpus,
        "wall_hours": significant(hours),
        "gpu_hours": significant(hours * gpus),
        "efficiency": dataclasses.asdict(EFFICIENCY),
        "leave_one_out": calibration_error(),
        "card_measured": any(row.card == card for row in CALIBRATION),  # False: no row of this card checks it
    }


def format_prediction(result: dict, experiment: str) -> str:
    b, loo = result["breakdown_ms"], result["leave_one_out"]
    lines = [
        f"{experiment}: predicted on the CPU for one {result['card']}, bf16, eager step; batch "
        f"{result['batch_size']} ({result['views_per_step']} view{'s' if result['views_per_step'] != 1 else ''})",
        f"  step {result['step_ms']:,.1f} ms, {result['samples_per_s']:,.1f} samples/s, {result['tflop_per_step']} "
        f"TFLOP/step, MFU {result['mfu']:.1%} of the {result['matmul_ceiling_tflop_per_s']:g} TFLOP/s matmul ceiling",
        f"  GEMM {b['gemm']:.1f} ms + conv {b['conv']:.1f} + attention {b['attention']:.1f} + memory {b['memory']:.1f} "
        f"({result['work']['gb']:,.1f} GB) + launches {b['launches']:.1f} ({result['work']['launches']} kernels)",
        f"  trainer.max_steps={result['max_steps']:,} on gpus={result['gpus']}: {result['wall_hours']:,.1f} h, "
        f"{result['gpu_hours']:,.1f} GPU-hours (all-reduce and data loading not modelled)",
        f"  calibration: leave-one-out error over {loo['rows']} measured GPU steps (H200, eager, older code) mean "
        f"{loo['mean_abs']:.0%}, rms {loo['rms']:.0%}, worst {loo['max_abs']:.0%} ({loo['worst']})",
    ]
    bound = [k for k in ("conv", "attention") if result["efficiency"][k] >= 1.0 and b[k] > 0]
    if bound:
        lines.append(
            f"  {' and '.join(bound)} ms: {'lower bounds' if len(bound) > 1 else 'a lower bound'} (the fit put the "
            "efficiency at the data sheet's peak: the rows cannot tell that time from the memory term's)"
        )
    if not result["card_measured"]:
        lines.append(
            f"  no {result['card']} step is measured yet: this is the H200's fitted efficiencies at this card's "
            "peaks, unchecked"
        )
    if result["compiled_recipe"]:
        lines.append(
            "  the recipe compiles (trainer.compile=true): this is its eager step, as the calibration measured; "
            "compiling fuses much of the memory term (not fitted: no compiled step measured on a GPU yet)"
        )
    return "\n".join(lines)


def recount(row: Row, cfg) -> Row:
    """`row` with its work counted again on today's code (after a change to the step or the counter; then refit
    and write CALIBRATION and EFFICIENCY in roofline.py). `cfg`: the row's pretrain config, composed by the caller
    (bench imports no CLI): `voxfm.compose("pretrain", "data.shards=unused", "run_dir=unused",
    f"experiment={row.experiment}", *row.overrides)`."""
    work, views, _ = count_work(cfg, reference=row.who != "voxfm")
    return dataclasses.replace(
        row,
        views=views,
        gemm_tflop=significant(work.gemm_flop / 1e12),
        conv_tflop=significant(work.conv_flop / 1e12),
        attention_tflop=significant(work.attention_flop / 1e12),
        gbytes=significant(work.bytes / 1e9),
        launches=work.launches,
    )
