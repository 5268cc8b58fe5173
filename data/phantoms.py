"""Synthetic 3D phantoms (CT in HU, MR in arbitrary units) for the demo and the tests.

Ellipsoid "bodies" with inner structures, written in varied orientations (RAS, LPS, LAS) so the
default path exercises reorientation and resampling without any download.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

_ORIENTATIONS = {"RAS": (1, 1, 1), "LPS": (-1, -1, 1), "LAS": (-1, 1, 1)}


def _ellipsoid(grid, centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def phantom(shape: tuple[int, int, int], modality: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One phantom volume [X, Y, Z] and its label map (0 background, 1 body, 2 organ, 3 lesion)."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = _ellipsoid(grid, rng.uniform(-0.1, 0.1, 3), rng.uniform(0.6, 0.9, 3))
    organ = body & _ellipsoid(grid, rng.uniform(-0.3, 0.3, 3), rng.uniform(0.15, 0.35, 3))
    lesion = organ & _ellipsoid(grid, rng.uniform(-0.2, 0.2, 3), rng.uniform(0.05, 0.12, 3))
    label = body.astype(np.uint8) + organ + lesion
    if modality == "CT":
        values = np.array([-1000.0, 40.0, 300.0, 80.0])
        noise = 20.0
    else:
        values = np.array([0.0, 300.0, 600.0, 900.0]) * rng.uniform(0.8, 1.2)
        noise = 15.0
    image = values[label] + rng.normal(0.0, noise, shape)
    dtype = np.int16 if modality == "CT" else np.float32
    return image.astype(dtype), label


def write_phantoms(output: str | Path, n: int, seed: int = 0, shape=(48, 48, 40)) -> list[Path]:
    """Write `n` phantoms (alternating CT/MR, rotating orientations) plus labels; returns image paths."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        modality = "CT" if i % 2 == 0 else "MR"
        orientation = list(_ORIENTATIONS)[i % len(_ORIENTATIONS)]
        spacing = rng.uniform(1.0, 2.5, 3)
        image, label = phantom(shape, modality, rng)
        affine = np.diag([*(np.array(_ORIENTATIONS[orientation]) * spacing), 1.0])
        path = out / f"phantom{i:03d}_{modality.lower()}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), path)
        nib.save(nib.Nifti1Image(label, affine), out / f"phantom{i:03d}_{modality.lower()}_label.nii.gz")
        paths.append(path)
    return paths
