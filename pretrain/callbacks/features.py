"""Feature-PCA pictures for objectives that learn dense features without reconstructing (self-distillation,
distillation): the patch features of one global crop per sample, projected on their first three principal
components and drawn as colours (R, G, B) beside the crop, three orthogonal middle slices each — every K steps and at
the last step, under run_dir/images/features_stepNNNNNN.png (and to W&B where pictures go there).

Dense features that degrade over a long run (what Gram anchoring counters, DINOv3) show here as colour maps that
stop following anatomy: blotches, or one colour everywhere, long before a downstream Dice says so. The network drawn
is the one the run exports: the EMA teacher where the objective keeps one, else the backbone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw

from voxfm.data.ingest.montage import middle_slices
from voxfm.data.ingest.safe_files import replacing
from voxfm.pretrain.callbacks.images import LINE, MIN_TILE, in_weights_dtype, pick_samples

log = logging.getLogger("voxfm")


def pca_colours(patches: torch.Tensor) -> torch.Tensor:
    """patches [n, N, D] → [n, N, 3] in [0, 1]: the projections on the first three principal components of all n·N
    features together (one colour scale for every sample), each component min-max scaled."""
    flat = patches.reshape(-1, patches.shape[-1]).float()
    flat = flat - flat.mean(dim=0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    k = min(3, v.shape[0])
    projected = flat @ v[:k].T
    if k < 3:
        projected = torch.cat([projected, projected.new_zeros(projected.shape[0], 3 - k)], dim=1)
    low, high = projected.min(dim=0).values, projected.max(dim=0).values
    return ((projected - low) / (high - low).clamp_min(1e-8)).reshape(*patches.shape[:2], 3)


def feature_grid(images: torch.Tensor, colours: torch.Tensor, patch: tuple[int, int, int]) -> np.ndarray:
    """images [n, 1, X, Y, Z] in [0, 1], colours [n, N, 3] on the token grid → RGB uint8: a row per sample, for each
    of the three views the crop's middle slice then its feature colours (each token a patch of voxels)."""
    rows = []
    for image, colour in zip(images, colours):
        vol = image[0].float().clamp(0, 1).cpu().numpy()
        grid = [s // p for s, p in zip(vol.shape, patch)]
        rgb = colour.reshape(*grid, 3).cpu().numpy()
        rgb = np.repeat(np.repeat(np.repeat(rgb, patch[0], 0), patch[1], 1), patch[2], 2)
        tiles = []
        for plane in range(3):
            grey = middle_slices(vol)[plane]
            tiles.append(np.repeat(grey[..., None], 3, axis=2))
            tiles.append(np.stack([middle_slices(rgb[..., c])[plane] for c in range(3)], axis=2))
        h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
        padded = [np.pad(t, ((0, h - t.shape[0] + 2), (0, w - t.shape[1] + 2), (0, 0)), constant_values=1.0)
                  for t in tiles]  # fmt: skip
        rows.append(np.concatenate(padded, axis=1))
    picture = np.concatenate(rows, axis=0)
    scale = max(1, MIN_TILE // max(rows[0].shape[0], 1))
    picture = np.repeat(np.repeat(picture, scale, 0), scale, 1)
    return (picture * 255).round().astype(np.uint8)


def captioned_rgb(picture: np.ndarray, step: int) -> Image.Image:
    out = Image.new("RGB", (picture.shape[1], picture.shape[0] + LINE), color=(0, 0, 0))
    out.paste(Image.fromarray(picture), (0, LINE))
    text = f"step {step}: rows are samples; per view (axial, coronal, sagittal): crop | patch-feature PCA as RGB"
    ImageDraw.Draw(out).text((2, 0), text, fill=(255, 255, 255))
    return out


class FeaturePictures(L.Callback):
    """Every `every_n_steps` (and at the last step) on rank 0, for token backbones whose objective does not declare
    `reconstructs`; every rank runs the forward (ZeRO-3 gathers parameters from all of them)."""

    def __init__(self, folder: Path, every_n_steps: int, wandb_logger=None, n_samples: int = 2):
        self.folder, self.every_n_steps, self.n_samples = Path(folder), every_n_steps, n_samples
        self.wandb = wandb_logger

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if not self.every_n_steps or (step % self.every_n_steps and not last) or "image" not in batch:
            return
        objective = pl_module.objective
        network = getattr(objective, "teacher_backbone", None) or pl_module.backbone
        if objective.declaration.reconstructs or not hasattr(network, "features"):
            return
        n = batch["image"].shape[0] // batch.get("n_views", 1)  # view-major: rows 0..n-1 are the first views
        picked = pick_samples(list(batch.get("modality", ["?"] * n))[:n], self.n_samples)
        images = in_weights_dtype(batch["image"][picked], network)
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                _, patches = network.features(images)
        finally:
            network.train(was_training)
        if not trainer.is_global_zero:
            return
        if not torch.isfinite(patches).all():  # a step the non-finite guard skips: no picture, never a crash
            log.warning("voxfm: no feature picture at step %d: the features are not finite", step)
            return
        picture = feature_grid(images, pca_colours(patches), tuple(network.spec.patch_size))
        self.folder.mkdir(parents=True, exist_ok=True)
        with replacing(self.folder / f"features_step{step:06d}.png", "wb") as f:
            captioned_rgb(picture, step).save(f, format="PNG")
        if self.wandb is not None:
            caption = "rows: samples; per view: crop | patch-feature PCA (RGB)"
            self.wandb.log_image(key="feature_pca", images=[picture], step=step, caption=[caption])
