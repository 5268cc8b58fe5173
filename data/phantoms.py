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
    if modality != "CT":  # an MR image is a magnitude: never negative, its background noise Rician-like
        image = np.abs(image)
    dtype = np.int16 if modality == "CT" else np.float32
    return image.astype(dtype), label


def ct_phantom(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A body-CT-like volume [X, Y, Z] in HU (int16): air outside, a soft-tissue trunk with fat under the skin,
    two lungs, a bone ring (ribs) and a spine, a few organs and lesions, and noise. Built from broadcast axes, not
    full grids, so a 512×512×300 volume needs about three copies of itself in memory."""
    x, y, z = (
        np.linspace(-1, 1, s, dtype=np.float32).reshape([-1 if i == a else 1 for i in range(3)])
        for a, s in enumerate(shape)
    )

    def inside(cx, cy, rx, ry, cz=0.0, rz=2.0):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0

    hu = np.full(shape, -1000, dtype=np.int16)
    rx, ry = rng.uniform(0.75, 0.9), rng.uniform(0.5, 0.65)
    hu[inside(0, 0, rx, ry)] = -100  # subcutaneous fat
    hu[inside(0, 0, rx - 0.06, ry - 0.06)] = 40  # soft tissue
    hu[inside(0, 0, rx - 0.08, ry - 0.08) & ~inside(0, 0, rx - 0.12, ry - 0.12)] = 700  # ribs
    for side in (-1, 1):
        hu[inside(side * 0.35, 0.05, 0.25, 0.35, rng.uniform(-0.3, 0.3), 0.8)] = -850  # lungs
    hu[inside(0, -ry + 0.2, 0.08, 0.08)] = 500  # spine
    for _ in range(int(rng.integers(3, 7))):  # organs, some with a lesion
        cx, cy, cz = rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3), rng.uniform(-0.8, 0.8)
        r = rng.uniform(0.06, 0.18)
        hu[inside(cx, cy, r, r, cz, r * 1.5)] = rng.integers(30, 80)
        if rng.random() < 0.5:
            hu[inside(cx, cy, r / 3, r / 3, cz, r / 2)] = rng.integers(90, 160)
    noise = rng.normal(0.0, 15.0, shape).astype(np.float32)
    return np.clip(hu + noise, -1024, 3071).astype(np.int16)


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
