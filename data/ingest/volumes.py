"""Loading NIfTI volumes with the checks that decide whether a file is sharded or rejected (DICOM:
data/ingest/dicom.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class RejectedVolume(Exception):
    """A volume that cannot be sharded; the message is the reason written to report.json."""


@dataclass
class Volume:
    """A 3D scalar volume in its source voxel grid.

    data: [X, Y, Z] in the file's own axis order; affine: [4, 4] voxel → world (mm).
    """

    data: np.ndarray
    affine: np.ndarray
    path: str


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def check_spacing(affine: np.ndarray, bounds: tuple[float, float], max_anisotropy: float) -> None:
    """Reject a voxel grid no scanner makes (e.g. 53 mm slices): resampling it would invent a huge, empty grid."""
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    shown = [round(float(s), 3) for s in spacing]
    if spacing.min() < bounds[0] or spacing.max() > bounds[1]:
        raise RejectedVolume(f"implausible spacing: {shown} mm is outside preprocess.spacing_bounds={list(bounds)}")
    if spacing.max() / spacing.min() > max_anisotropy:
        raise RejectedVolume(
            f"implausible spacing: {shown} mm is more anisotropic than preprocess.max_anisotropy={max_anisotropy}"
        )


def n_frames(path: str | Path) -> int:
    """Frames of a 4D NIfTI (from its header), 1 for anything else; unreadable files are left to `load_volume`."""
    try:
        shape = nib.load(str(path)).shape
    except Exception:
        return 1
    return int(shape[3]) if len(shape) == 4 else 1


def load_volume(
    path: str | Path,
    max_voxels: int,
    spacing_bounds: tuple[float, float] = (0.1, 10.0),
    max_anisotropy: float = 10.0,
    frame: int | None = None,
    label: bool = False,
) -> Volume:
    """Read one NIfTI volume; raise `RejectedVolume` with a reason for anything unusable. A `label` map may be
    constant (all background: a case without the structure).

    The header (shape, size, affine, spacing) is checked before any voxel is read, so an absurd header costs
    no memory.
    """
    path = str(path)
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for damaged files
        raise RejectedVolume(f"unreadable: {type(err).__name__}: {err}") from err
    shape, frame = check_header(img, max_voxels, spacing_bounds, max_anisotropy, frame)
    try:
        # a 4D frame is sliced from the proxy: only that frame's voxels are read
        data = np.asanyarray(img.dataobj[..., frame] if frame is not None else img.dataobj).reshape(shape)
    except Exception as err:
        raise RejectedVolume(f"unreadable voxels: {type(err).__name__}: {err}") from err
    check_voxels(data, constant_ok=label)
    return Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), path=path)


def check_header(
    img, max_voxels: int, spacing_bounds: tuple[float, float], max_anisotropy: float, frame: int | None
) -> tuple[tuple[int, ...], int | None]:
    """A NIfTI header's checks (no voxel read): the 3D shape to read and the frame, or `RejectedVolume`."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape, frame = shape[:3], None
    if len(shape) == 4 and frame is not None:
        if not 0 <= frame < shape[3]:
            raise RejectedVolume(f"frame {frame} of a 4D volume with {shape[3]} frames")
        shape = shape[:3]
    elif len(shape) == 4:
        raise RejectedVolume(f"not a 3D volume: shape {shape} (a 4D series: preprocess.frames=first or all shards it)")
    if len(shape) != 3:
        raise RejectedVolume(f"not a 3D volume: shape {shape}")
    n_voxels = int(np.prod(shape, dtype=np.int64))
    if n_voxels > max_voxels:
        raise RejectedVolume(f"too large: {shape} = {n_voxels} voxels > preprocess.max_voxels={max_voxels}")
    if min(shape) < 2:
        raise RejectedVolume(f"degenerate shape {shape}")
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise RejectedVolume("invalid affine in header (singular or non-finite)")
    check_spacing(img.affine, spacing_bounds, max_anisotropy)
    return shape, frame


def check_voxels(data: np.ndarray, constant_ok: bool = False) -> None:
    """Reject voxels no model should see: non-numeric, NaN/Inf, or one constant value (unless `constant_ok`)."""
    if data.dtype.kind not in "iuf":
        raise RejectedVolume(f"unsupported voxel type {data.dtype}")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise RejectedVolume("voxels contain NaN or infinity")
    if not constant_ok and data.min() == data.max():
        raise RejectedVolume(f"constant volume (every voxel = {data.min()})")
