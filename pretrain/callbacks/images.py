"""Reconstruction pictures for masked objectives: input / masked input / reconstruction, three orthogonal middle
slices each, a few samples across modalities — every K steps and at the last step, under run_dir/images/ and to
W&B, captioned: the step, each column's view and kind, each row's modality."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw

from voxfm.data.ingest.montage import middle_slices
from voxfm.data.ingest.safe_files import replacing

KINDS = ("original", "masked", "reconstruction")
SHOWN = {"original": "input", "masked": "masked", "reconstruction": "output"}
VIEWS = ("axial", "coronal", "sagittal")
LINE, LEFT = 14, 30  # caption line height; left margin for each row's modality (pixels)
MIN_TILE = 96  # pixels: small CPU crops are enlarged (nearest) so a grid stays readable


def in_weights_dtype(images: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
    """The views come in the step's half type under a half precision (`view_dtype`), while a picture's forward runs
    outside autocast, on the weights as they are: the images in the weights' dtype (fp32 under bf16-mixed, bf16
    for DeepSpeed's bf16 weights, which take them as they come)."""
    weight = next(network.parameters(), None)
    return images if weight is None else images.to(weight.dtype)


def pick_samples(modalities: list[str], n: int) -> list[int]:
    """Up to n indices, one per modality first (CT, MR, PET alike), then in order."""
    first: dict[str, int] = {}
    for i, m in enumerate(modalities):
        first.setdefault(m, i)
    picked = list(first.values())[:n]
    picked += [i for i in range(len(modalities)) if i not in picked][: n - len(picked)]
    return picked


def reconstruction_grid(volumes: dict[str, torch.Tensor], indices: list[int]) -> np.ndarray:
    """volumes: {"original", "masked", "reconstruction"}: [B, C, X, Y, Z] → uint8 picture, one row per sample,
    columns = (original, masked, reconstruction) × (axial, coronal, sagittal)."""
    rows = []
    for i in indices:
        tiles = []
        for plane in range(3):
            for kind in KINDS:
                vol = volumes[kind][i, 0].float().clamp(0, 1).cpu().numpy()
                tiles.append(middle_slices(vol)[plane])
        h = max(t.shape[0] for t in tiles)
        w = max(t.shape[1] for t in tiles)
        padded = [np.pad(t, ((0, h - t.shape[0] + 2), (0, w - t.shape[1] + 2)), constant_values=1.0) for t in tiles]
        rows.append(np.concatenate(padded, axis=1))
    grid = np.concatenate(rows, axis=0)
    scale = max(1, MIN_TILE // max(rows[0].shape[0], 1))
    grid = np.kron(grid, np.ones((scale, scale)))
    return (grid * 255).round().astype(np.uint8)


def captioned(grid: np.ndarray, step: int, modalities: list[str]) -> Image.Image:
    """The grid under three caption lines (the step and how to read it; each view over its three columns; each
    column's kind) with each row's modality at its left."""
    height, width = grid.shape
    picture = Image.new("L", (LEFT + width, 3 * LINE + height), color=0)
    picture.paste(Image.fromarray(grid), (LEFT, 3 * LINE))
    draw = ImageDraw.Draw(picture)
    draw.text((2, 0), f"step {step}: rows are samples; per view: input | masked input | reconstruction", fill=255)
    column = width / (len(VIEWS) * len(KINDS))
    for v, view in enumerate(VIEWS):
        draw.text((LEFT + v * len(KINDS) * column + 2, LINE), view, fill=255)
        for k, kind in enumerate(KINDS):
            draw.text((LEFT + (v * len(KINDS) + k) * column + 2, 2 * LINE), SHOWN[kind], fill=255)
    row = height / max(len(modalities), 1)
    for r, modality in enumerate(modalities):
        draw.text((2, 3 * LINE + r * row + row / 2 - LINE / 2), str(modality)[:5], fill=255)
    return picture


class ReconstructionImages(L.Callback):
    """Every `every_n_steps` on rank 0, for objectives that declare `reconstructs` (`reconstruct(batch, backbone)`)."""

    def __init__(self, folder: Path, every_n_steps: int, wandb_logger=None, n_samples: int = 4):
        self.folder, self.every_n_steps, self.n_samples = Path(folder), every_n_steps, n_samples
        self.wandb = wandb_logger

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        """Every rank reconstructs (under ZeRO-3 a forward pass gathers parameters from all of them); rank 0 writes."""
        step = trainer.global_step
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if not self.every_n_steps or (step % self.every_n_steps and not last):
            return
        if not pl_module.objective.declaration.reconstructs:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            inputs = dict(batch)
            if "image" in batch:
                inputs["image"] = in_weights_dtype(batch["image"], pl_module.backbone)
            volumes = pl_module.objective.reconstruct(inputs, pl_module.backbone)
        finally:
            pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        picked = pick_samples(batch["modality"], self.n_samples)
        picture = reconstruction_grid(volumes, picked)
        self.folder.mkdir(parents=True, exist_ok=True)
        with replacing(self.folder / f"step{step:06d}.png", "wb") as f:
            captioned(picture, step, [batch["modality"][i] for i in picked]).save(f, format="PNG")
        if self.wandb is not None:
            self.wandb.log_image(
                key="reconstructions",
                images=[picture],
                step=step,
                caption=["rows: samples; columns: original / masked / reconstruction × axial, coronal, sagittal"],
            )
