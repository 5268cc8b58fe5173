"""Random crops of a decoded volume, biased towards the foreground (nnU-Net style oversampling)."""

from __future__ import annotations

import numpy as np


def triple(v) -> tuple[int, int, int]:
    """An int or three ints (a size or a patch) → three ints."""
    return (int(v),) * 3 if isinstance(v, int) else tuple(int(i) for i in v)  # type: ignore[return-value]


def view_shift(crop_size, n_views: int, overlap: float) -> tuple[int, int, int]:
    """Per-axis distance between the corners of two views whose shared volume / view volume = overlap."""
    if n_views == 1:
        return (0, 0, 0)
    return tuple(round(c * (1.0 - overlap ** (1.0 / 3.0))) for c in triple(crop_size))  # type: ignore[return-value]


def pad_to(vol: np.ndarray, size: tuple[int, int, int], value: float = 0) -> np.ndarray:
    """Pad any axis shorter than the crop, centred, with `value` (the background level)."""
    pads = [((max(s - d, 0)) // 2, max(s - d, 0) - (max(s - d, 0)) // 2) for d, s in zip(vol.shape, size)]
    return np.pad(vol, pads, constant_values=value) if any(p for pair in pads for p in pair) else vol


def crop_start(shape, size, centre: np.ndarray | None, rng: np.random.Generator) -> list[int]:
    """Start corner of a crop of `size` in `shape`: around `centre` if given, else uniform."""
    starts = []
    for d, s, axis in zip(shape, size, range(3)):
        hi = d - s
        if centre is None:
            starts.append(int(rng.integers(0, hi + 1)))
        else:
            starts.append(int(np.clip(centre[axis] - s // 2 + rng.integers(-(s // 4), s // 4 + 1), 0, hi)))
    return starts


def padded(vol: np.ndarray, fg_points: list, size: tuple[int, int, int], value: float = 0) -> tuple[np.ndarray, list]:
    """`vol` padded to at least `size` (centred, with the background `value`), its foreground points moved with it."""
    pads = [max(s - d, 0) // 2 for d, s in zip(vol.shape, size)]
    if not any(pads):
        return pad_to(vol, size, value), fg_points
    return pad_to(vol, size, value), [[int(c) + p for c, p in zip(point, pads)] for point in fg_points]


def random_crop(
    vol: np.ndarray, fg_points: list, size: tuple[int, int, int], foreground_prob: float, rng: np.random.Generator
) -> np.ndarray:
    """One crop (a view) of `size` out of a volume at least that large, centred near a foreground point with
    probability `foreground_prob` (when the volume has any), else placed uniformly."""
    centre = None
    if fg_points and rng.random() < foreground_prob:
        centre = np.asarray(fg_points[rng.integers(len(fg_points))])
    x, y, z = crop_start(vol.shape, size, centre, rng)
    return vol[x : x + size[0], y : y + size[1], z : z + size[2]]


def random_crops(
    vol: np.ndarray,
    fg_points: list,
    size: tuple[int, int, int],
    n: int,
    foreground_prob: float,
    rng: np.random.Generator,
    pad_value: float = 0,
) -> list[np.ndarray]:
    """`n` crops (views) of shape `size` out of `vol`, both [X, Y, Z] (see `random_crop`); a volume smaller than
    the crop is padded first."""
    vol, fg_points = padded(vol, fg_points, size, pad_value)
    return [random_crop(vol, fg_points, size, foreground_prob, rng) for _ in range(n)]
