"""The constants of `voxfm bench model predict=<card>` (`pretrain/bench/predict.py`), in one place: the cards, the
efficiencies fitted on the GPU rows, and those rows with the work `pretrain/bench/count.py` counts for them.

A step takes  gemm FLOP / (peak · gemm) + conv FLOP / (peak · conv) + attention FLOP / (peak · attention)
+ bytes / (HBM bandwidth · memory) + launches · launch_us,  an eager step's sum (no overlap, no fusion).

The rows are every GPU measurement of a training step we have: BENCHMARKS.md's "GPU: one NVIDIA H200" table
(2026-11-28; voxfm's column and MONAI's reference beside it, `voxfm bench model`, bf16-mixed). That was the eager
step of older code (host-timed, before the sync-free step and the whole-step compile); each row's work was counted
on the code of 2026-12-06 (fdd532b) at the overrides that rebuild its shapes, and stays as counted then.
`mae_primus_m` was then a plain ViT of Primus-M's size, so its row names that ViT. Add every later GPU measurement
here (its work from `predict.recount`) and refit (`predict.fit`); `tests/bench/test_predict.py` keeps EFFICIENCY
equal to the fit of CALIBRATION.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    name: str
    peak_tflops: float  # dense bf16, the data sheet's
    hbm_tb_s: float
    matmul_ceiling_tflops: float  # measured bf16 matmul rate: what `voxfm bench model` takes MFU against
    measured: str  # where that ceiling was measured


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the card's peak each kind of work reaches, and the fixed cost of one launched kernel (µs)."""

    gemm: float
    conv: float
    attention: float
    memory: float
    launch_us: float


@dataclass(frozen=True)
class Row:
    """One measured step: what ran (`who` on `card`, `experiment` + `overrides`), its views per step and samples/s
    as measured, and its work as counted (TFLOP, GB, kernel launches per step)."""

    card: str
    measured: str
    who: str
    experiment: str
    overrides: tuple[str, ...]
    views: int
    samples_per_s: float
    gemm_tflop: float
    conv_tflop: float
    attention_tflop: float
    gbytes: float
    launches: float

    @property
    def step_ms(self) -> float:
        return self.views / self.samples_per_s * 1e3


CARDS = {
    "h100": Card("NVIDIA H100 SXM", 989.0, 3.35, 728.0, "README's figures to beat"),
    "h200": Card("NVIDIA H200", 989.0, 4.8, 790.0, "2026-11-28, 783-798 (BENCHMARKS.md)"),
}

H200, NOV28, MAE, DYNUNET = "h200", "2026-11-28", "MONAI MaskedAutoEncoderViT", "MONAI DynUNet (res_block, same widths)"
P8_160 = ("data.crop_size=[160,160,160]", "model.patch_size=8")
R128_B4 = ("data.crop_size=[128,128,128]", "data.batch_size=4")
# `mae_primus_m` on 2026-11-28: a plain ViT (MONAI-named blocks) of Primus-M's size, batch 8
PRIMUS_M_VIT = (*P8_160, "model.hidden_size=864", "model.mlp_dim=3456", "model.num_layers=16", "data.batch_size=8")
# Row(card, measured, who, experiment, overrides, views, samples/s | counted: GEMM, conv, attention TFLOP, GB, launches)
CALIBRATION: tuple[Row, ...] = (
    Row(H200, NOV28, "voxfm", "mae_vit_b", ("data.batch_size=1024",), 1024, 2739, 39.93, 0.0, 1.413, 189.1, 591),
    Row(H200, NOV28, MAE, "mae_vit_b", ("data.batch_size=1024",), 1024, 2773, 41.57, 2.783, 0.0, 263.7, 802),
    Row(H200, NOV28, "voxfm", "mae_vit_b", (*P8_160, "data.batch_size=8"), 8, 71.8, 10.98, 0.0, 15.14, 34.79, 591),
    Row(H200, NOV28, MAE, "mae_vit_b", (*P8_160, "data.batch_size=8"), 8, 10.8, 23.96, 0.1007, 0.0, 575.9, 802),
    Row(H200, NOV28, "voxfm", "mae_vit_b", (*P8_160, "data.batch_size=16"), 16, 75.1, 21.96, 0.0, 30.28, 68.92, 591),
    Row(H200, NOV28, "voxfm", "mim_resenc_l", R128_B4, 4, 22.3, 0.0, 17.2, 0.0, 132.8, 1369),
    Row(H200, NOV28, DYNUNET, "mim_resenc_l", R128_B4, 4, 31.8, 0.0, 11.46, 0.0, 92.14, 478),
    Row(H200, NOV28, "voxfm", "mae_vit_b", (), 32, 840, 1.248, 0.0, 0.04414, 6.644, 591),
    Row(H200, NOV28, MAE, "mae_vit_b", (), 32, 643, 1.299, 0.08697, 0.0, 8.993, 802),
    Row(H200, NOV28, "voxfm", "mae_vit_b", PRIMUS_M_VIT, 8, 57.4, 16.59, 0.0, 17.2, 44.14, 707),
    Row(H200, NOV28, MAE, "mae_vit_b", PRIMUS_M_VIT, 8, 10.3, 31.35, 0.1132, 0.0, 618.0, 986),
    Row(H200, NOV28, "voxfm", "mim_resenc_l", (), 4, 11.7, 0.0, 33.6, 0.0, 258.6, 1369),
    Row(H200, NOV28, DYNUNET, "mim_resenc_l", (), 4, 16.4, 0.0, 22.39, 0.0, 179.7, 478),
    Row(H200, NOV28, "voxfm", "simclr_resenc_l", (), 32, 112.2, 0.0003023, 39.57, 0.0, 316.0, 1186),
    Row(H200, NOV28, DYNUNET, "simclr_resenc_l", (), 32, 98.6, 0.0, 38.69, 0.0, 310.4, 478),
    Row(H200, NOV28, "voxfm", "mae_contrastive_vit_b", (), 32, 663, 1.248, 0.0, 0.04414, 6.518, 660),
    Row(H200, NOV28, MAE, "mae_contrastive_vit_b", (), 32, 510, 1.299, 0.08697, 0.0, 8.993, 802),
)

# conv and attention sit at the bound: these rows cannot tell their time from the memory term's (the steps with the
# most conv or attention FLOPs also move the most bytes), so their ms in a breakdown are lower bounds
EFFICIENCY = Efficiency(gemm=0.2758, conv=1.0, attention=1.0, memory=0.2454, launch_us=50.61)
