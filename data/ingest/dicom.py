"""DICOM series → one 3D volume (voxels + RAS affine), with a reason for every series that cannot be one.

Files are grouped by SeriesInstanceUID whatever their names, order or folders; slices are ordered by
ImagePositionPatient along the slice normal (never by file name or InstanceNumber), RescaleSlope /
RescaleIntercept give HU, and DICOM's LPS patient axes become RAS. A series is rejected, with its
reason, for a gantry tilt, missing or unevenly spaced slices, mixed orientations or pixel grids,
duplicate positions, or a multi-frame object.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxfm.data.ingest.preprocess import check_mb
from voxfm.data.ingest.volumes import RejectedVolume, Volume, check_spacing, check_voxels

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MAX_TILT_DEGREES = 0.5  # slices stepping off their own normal by more than this: a tilted gantry
SPACING_TOLERANCE = 0.05  # relative: a gap this much wider or narrower than the median is a missing/uneven slice


def is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_header(path: str) -> dict:
    """The grouping keys of one file (no pixel data read); raises RejectedVolume for a damaged file."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size="4 KB")  # large values (the pixels) stay on disk
    except Exception as err:
        raise RejectedVolume(f"unreadable DICOM: {type(err).__name__}: {err}") from err
    uid = ds.get("SeriesInstanceUID")
    if not uid:
        raise RejectedVolume("unreadable DICOM: no SeriesInstanceUID")
    return {
        "series": str(uid),
        "subject": str(ds.get("PatientID", "") or ""),
        "modality": str(ds.get("Modality", "") or ""),
        "has_pixels": "PixelData" in ds or "FloatPixelData" in ds,
    }


def _float_list(ds, tag: str, n: int, path: str) -> np.ndarray:
    value = ds.get(tag)
    if value is None or len(value) != n:
        raise RejectedVolume(f"DICOM slice {Path(path).name} has no usable {tag}")
    return np.array([float(v) for v in value])


def _int(ds, tag: str, path: str) -> int:
    value = ds.get(tag)
    if value is None:
        raise RejectedVolume(f"DICOM slice {Path(path).name} has no {tag}")
    return int(value)


def _geometry(datasets: list, paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, in-plane spacing [between rows, between columns], slice positions)."""
    orientations = [_float_list(ds, "ImageOrientationPatient", 6, p) for ds, p in zip(datasets, paths)]
    if any(not np.allclose(o, orientations[0], atol=1e-4) for o in orientations):
        raise RejectedVolume("DICOM series mixes slice orientations (ImageOrientationPatient differs)")
    grids = {
        (_int(ds, "Rows", p), _int(ds, "Columns", p), *np.round(_float_list(ds, "PixelSpacing", 2, p), 5))
        for ds, p in zip(datasets, paths)
    }
    if len(grids) > 1:
        raise RejectedVolume(f"DICOM series mixes pixel grids (Rows, Columns, PixelSpacing): {sorted(grids)}")
    row_dir, col_dir = orientations[0][:3], orientations[0][3:]
    spacing = _float_list(datasets[0], "PixelSpacing", 2, paths[0])  # [between rows, between columns]
    positions = np.array([_float_list(ds, "ImagePositionPatient", 3, p) for ds, p in zip(datasets, paths)])
    return row_dir, col_dir, spacing, positions


def _check_slices(positions: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """The step between slices (mm, LPS); rejects tilt, duplicate, missing or uneven slices."""
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    if np.any(along < 1e-3):
        raise RejectedVolume("DICOM series has several slices at one position (several acquisitions in one series?)")
    tilt = np.degrees(np.arccos(np.clip(along / np.linalg.norm(steps, axis=1), -1.0, 1.0)))
    if tilt.max() > MAX_TILT_DEGREES:
        raise RejectedVolume(
            f"gantry tilt: slices step {tilt.max():.1f}° off their normal (> {MAX_TILT_DEGREES}°); "
            "resample the series to an orthogonal grid first"
        )
    median = float(np.median(along))
    worst = int(np.argmax(np.abs(along - median)))
    if abs(along[worst] - median) > SPACING_TOLERANCE * median:
        raise RejectedVolume(
            f"missing or uneven slices: a gap of {along[worst]:.2f} mm after slice {worst} where the "
            f"series steps {median:.2f} mm"
        )
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def _pixels(ds, path: str) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as err:
        raise RejectedVolume(f"unreadable DICOM pixel data in {Path(path).name}: {type(err).__name__}: {err}") from err
    if pixels.ndim != 2:
        raise RejectedVolume(f"DICOM slice {Path(path).name} holds a {pixels.ndim}-d pixel array, not one 2D slice")
    return pixels


def _rescaled(stack: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Stored values → modality units (HU for CT). Integer results stay int16 when they fit, else float32."""
    integral = np.all(slopes == 1) and np.all(intercepts == np.round(intercepts))
    if integral:
        out = stack.astype(np.int32) + intercepts.astype(np.int32)
        if out.min() >= np.iinfo(np.int16).min and out.max() <= np.iinfo(np.int16).max:
            return out.astype(np.int16)
        return out
    return stack.astype(np.float32) * slopes.astype(np.float32) + intercepts.astype(np.float32)


def load_series(
    paths: list[str],
    max_voxels: int,
    spacing_bounds: tuple[float, float] = (0.1, 10.0),
    max_anisotropy: float = 10.0,
    max_mb: float = 4096.0,
) -> Volume:
    """The files of one series → Volume [columns, rows, slices] with its RAS affine; the same checks as
    `load_volume` (geometry and spacing from the headers before any pixel is decoded, then the voxels)."""
    import pydicom

    # pixel data is deferred: read only once every header check has passed
    datasets = [pydicom.dcmread(p, defer_size="4 KB") for p in paths]
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise RejectedVolume(
            "multi-frame DICOM object (enhanced CT/MR or cine): not read by voxfm; convert it to "
            "NIfTI (e.g. dcm2niix) first"
        )
    if len(datasets) < 2:
        raise RejectedVolume("DICOM series with a single slice: not a 3D volume")
    row_dir, col_dir, spacing, positions = _geometry(datasets, paths)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    n_voxels = rows * cols * len(paths)
    if n_voxels > max_voxels:
        raise RejectedVolume(f"too large: {(cols, rows, len(paths))} = {n_voxels} voxels > preprocess.max_voxels")
    check_mb((cols, rows, len(paths)), -(-_int(datasets[0], "BitsAllocated", paths[0]) // 8), max_mb)
    normal = np.cross(row_dir, col_dir)
    order = np.argsort(positions @ normal, kind="stable")
    paths, datasets, positions = [paths[i] for i in order], [datasets[i] for i in order], positions[order]
    step = _check_slices(positions, normal)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    check_spacing(lps, spacing_bounds, max_anisotropy)
    # pixel_array[r, c]: c runs along the row direction, r along the column direction → voxels [c, r, slice],
    # in Fortran order like NIfTI voxels, so both take the same (bit-identical) resampling path
    first = _pixels(datasets[0], paths[0])
    stack = np.empty((cols, rows, len(paths)), dtype=first.dtype, order="F")
    for k, (ds, p) in enumerate(zip(datasets, paths)):
        stack[:, :, k] = first.T if k == 0 else _pixels(ds, p).T
    slopes = np.array([float(ds.get("RescaleSlope", 1) or 1) for ds in datasets])
    intercepts = np.array([float(ds.get("RescaleIntercept", 0) or 0) for ds in datasets])
    data = _rescaled(stack, slopes, intercepts)
    check_voxels(data)
    return Volume(data=data, affine=LPS_TO_RAS @ lps, path=str(Path(paths[0]).parent))
