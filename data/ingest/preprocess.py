"""Per-volume preprocessing: RAS orientation, target spacing, intensity normalisation, foreground crop.

Orientation and resampling are in `data/ingest/resample.py`; intensity normalisation is only *recorded* here
and applied when streaming, so shards keep the scanner's values (HU for CT). Air/background around
the body is cropped away (with a margin) and the crop recorded, so it can be undone (`uncrop`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import nibabel as nib
import numpy as np

from voxfm.data.ingest.modality import UNKNOWN, from_intensities, label_like
from voxfm.data.ingest.resample import resample
from voxfm.data.ingest.volumes import RejectedVolume, Volume

Modality = Literal["CT", "MR", "PET"]
MODALITIES: tuple[str, ...] = ("CT", "MR", "PET")
SHARDED_MODALITIES = (*MODALITIES, UNKNOWN)  # what a sample may record: unknown with unknown_modality=keep
UNKNOWN_MODALITY = ("reject", "keep")
FRAMES = ("reject", "first", "all")  # what to do with a 4D series
FOREGROUND_LEVEL = 0.05  # in normalised [0, 1] units: above air/background for CT and MR alike
FOREGROUND_STRIDE = 2  # the foreground is found on every 2nd voxel per axis: 8x less work, same boxes and points


@dataclass(frozen=True)
class PreprocessOptions:
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    max_voxels: int = 1024**3
    max_mb: float = 4096.0  # one input's voxels in memory (check_mb)
    n_foreground_points: int = 256
    spacing_bounds: tuple[float, float] = (0.1, 10.0)
    max_anisotropy: float = 10.0
    frames: str = "reject"
    foreground_crop: bool = True
    crop_margin_mm: float = 10.0
    min_shape: int = 16
    keep_dicom_uids: bool = False  # SeriesInstanceUID in each sample: it links back to the hospital's PACS

    def __post_init__(self):
        for f in fields(self):  # YAML and the command line give any type: a wrong one is named, not a TypeError
            if not _same_kind(getattr(self, f.name), f.default):
                raise ValueError(f"preprocess.{f.name}={getattr(self, f.name)!r}: expected {_expected(f.default)}")
        if self.max_voxels < 1 or self.max_mb <= 0:
            raise ValueError(
                f"preprocess.max_voxels={self.max_voxels}, preprocess.max_mb={self.max_mb}: expected positive limits"
            )
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"preprocess.spacing={list(self.spacing)}: expected 3 positive values in mm")
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"preprocess.ct_window={list(self.ct_window)}: expected [low, high], low < high")
        if not 0 < self.spacing_bounds[0] < self.spacing_bounds[1]:
            raise ValueError(
                f"preprocess.spacing_bounds={list(self.spacing_bounds)}: expected [low, high] mm, 0 < low < high"
            )
        if self.frames not in FRAMES:
            raise ValueError(f"preprocess.frames={self.frames!r}; allowed: {', '.join(FRAMES)}")
        if self.max_anisotropy < 1:
            raise ValueError(f"preprocess.max_anisotropy={self.max_anisotropy}: expected >= 1")
        if self.crop_margin_mm < 0 or self.min_shape < 1:
            raise ValueError(
                f"preprocess.crop_margin_mm={self.crop_margin_mm}, preprocess.min_shape={self.min_shape}: "
                "expected a margin >= 0 mm and a shape >= 1 voxel"
            )
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(f"preprocess.percentiles={list(self.percentiles)}: expected 0 <= low < high <= 100")


def _same_kind(value, default) -> bool:
    """`value` is what `default` is: true/false, a string, a number (not a bool), or as many numbers."""
    if isinstance(default, tuple):
        return isinstance(value, tuple) and len(value) == len(default) and all(_same_kind(v, 0.0) for v in value)
    if isinstance(default, (bool, str)):
        return isinstance(value, type(default))
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expected(default) -> str:
    if isinstance(default, tuple):
        return f"a list of {len(default)} numbers"
    return {bool: "true or false", str: "a string"}.get(type(default), "a number")


def check_mb(shape, itemsize: int, max_mb: float) -> None:
    """Reject an input whose voxels would take more than `max_mb` MB, from its header, before they are read.
    Counted at >= 4 bytes a voxel: resampling works on a float32 copy, whatever the stored type."""
    n_bytes = int(np.prod(shape, dtype=np.int64)) * max(int(itemsize), 4)
    if n_bytes > max_mb * 2**20:
        raise RejectedVolume(
            f"too large: {list(shape)} voxels = {n_bytes / 2**20:.0f} MB in memory > preprocess.max_mb={max_mb}"
        )


def cast_like(resampled: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Integer sources go back to their own type (better compression, exact HU), in native byte order;
    floats stay float32."""
    if np.dtype(dtype).kind in "iu":
        dtype = np.dtype(dtype).newbyteorder("=")
        info = np.iinfo(dtype)
        rounded = np.rint(resampled, out=resampled) if resampled.dtype == np.float32 else np.rint(resampled)
        return np.clip(rounded, info.min, info.max, out=rounded).astype(dtype)
    return resampled.astype(np.float32)


def label_dtype(labels: np.ndarray) -> np.dtype:
    return np.dtype(np.uint8) if labels.min() >= 0 and labels.max() < 256 else np.dtype(np.int32)


def grid_mismatch(label_shape, label_affine, image_shape, image_affine) -> str:
    """The reason a label map cannot be the image's: another shape, or the same shape elsewhere in space."""
    if tuple(label_shape) != tuple(image_shape):
        return f"label grid {tuple(label_shape)} does not match image grid {tuple(image_shape)}"
    worst = float(np.abs(np.asarray(label_affine) - np.asarray(image_affine)).max())
    return f"label grid has the image's shape {tuple(image_shape)} but another affine (differs by up to {worst:.3g})"


def decide_modality(volume: Volume, modality: str | None, source: str | None, unknown: str) -> dict:
    """The sample's modality record: what the evidence said (`source`), or the intensities' verdict; a label map
    is refused unless a manifest row named its modality, and so is an unknown modality unless `unknown=keep`."""
    if source != "manifest" and (why := label_like(volume.data)):
        raise RejectedVolume(f"label map, not an image ({why}); a manifest row with its modality shards it anyway")
    if modality is not None:
        return {"modality": modality, "modality_source": source, "modality_inferred": False}
    modality, evidence = from_intensities(volume.data)
    if modality is None and unknown != "keep":
        raise RejectedVolume(
            f"modality unknown: give it in a manifest (column modality), or unknown_modality=keep ({evidence})"
        )
    record = {"modality": modality or UNKNOWN, "modality_source": "intensities", "modality_inferred": True}
    return record | {"modality_evidence": evidence}


def intensity_normalisation(data: np.ndarray, modality: str, opts: PreprocessOptions) -> dict:
    """How to map this volume to [0, 1]: a fixed HU window for CT, robust percentiles otherwise."""
    if modality == "CT":
        low, high = opts.ct_window
        return {"scheme": "window", "low": float(low), "high": float(high)}
    flat = data.reshape(-1)
    if flat.size > 2_000_000:  # percentiles of a strided subsample: same values, a fraction of the time
        flat = flat[:: flat.size // 1_000_000]
    low, high = np.percentile(flat, opts.percentiles)
    if high <= low:
        high = low + 1.0
    return {"scheme": "percentile", "percentiles": list(opts.percentiles), "low": float(low), "high": float(high)}


def normalise(data: np.ndarray, norm: dict) -> np.ndarray:
    """Apply a recorded normalisation. Returns float32 in [0, 1]."""
    scale = 1.0 / (norm["high"] - norm["low"])
    out = (data.astype(np.float32) - np.float32(norm["low"])) * np.float32(scale)
    return np.clip(out, 0.0, 1.0, out=out)


def foreground_mask(image: np.ndarray, norm: dict) -> np.ndarray:
    """Foreground on the coarse grid image[::FOREGROUND_STRIDE, ...]."""
    s = FOREGROUND_STRIDE
    return normalise(image[::s, ::s, ::s], norm) > FOREGROUND_LEVEL


def foreground_box(mask: np.ndarray, shape, margin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, stop) voxel box around the coarse foreground, widened by `margin` voxels, inside `shape`."""
    coords = np.argwhere(mask) * FOREGROUND_STRIDE
    start = np.maximum(coords.min(axis=0) - (FOREGROUND_STRIDE - 1) - margin, 0)  # the coarse grid may miss one
    stop = np.minimum(coords.max(axis=0) + FOREGROUND_STRIDE + margin, shape)
    return start, stop


def foreground_points(mask: np.ndarray, offset: np.ndarray, n: int, rng: np.random.Generator) -> list[list[int]]:
    """Up to `n` random voxel coordinates [x, y, z] (of the cropped grid) inside the foreground, for
    foreground-biased crops."""
    coords = np.argwhere(mask) * FOREGROUND_STRIDE - offset
    if len(coords) == 0:
        return []
    pick = rng.choice(len(coords), size=min(n, len(coords)), replace=False)
    return coords[np.sort(pick)].tolist()


def uncrop(stored: np.ndarray, meta: dict, fill: float = 0) -> np.ndarray:
    """Undo the foreground crop: the stored array back on the full resampled grid (`fill` outside)."""
    crop = meta.get("crop")
    if crop is None:
        return stored
    out = np.full(crop["uncropped_shape"], fill, dtype=stored.dtype)
    x, y, z = crop["offset"]
    out[x : x + stored.shape[0], y : y + stored.shape[1], z : z + stored.shape[2]] = stored
    return out


def axcodes(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(affine))


def voxel_spacing(affine: np.ndarray) -> list[float]:
    return [round(float(s), 4) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))]


def crop_to_foreground(
    image: np.ndarray, affine: np.ndarray, mask: np.ndarray, opts: PreprocessOptions
) -> tuple[tuple[slice, ...], np.ndarray, dict | None]:
    """The box to keep (slices), the affine of the cropped grid, and the record that undoes the crop."""
    if not opts.foreground_crop:
        return (slice(None),) * 3, affine, None
    margin = np.ceil(opts.crop_margin_mm / np.asarray(opts.spacing)).astype(int)
    start, stop = foreground_box(mask, image.shape, margin)
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, :3] @ start
    record = {"offset": start.tolist(), "uncropped_shape": list(image.shape), "margin_mm": opts.crop_margin_mm}
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop)), shifted, record


def preprocess(
    volume: Volume,
    modality: str | None,
    opts: PreprocessOptions,
    label: Volume | None = None,
    modality_source: str | None = None,
    unknown_modality: str = "reject",
):
    """Volume (+ optional label map on the same grid) → (image, label, metadata) in RAS at target spacing,
    cropped to the foreground. `modality` None: decided from the intensities (`decide_modality`)."""
    if label is not None and (
        label.data.shape != volume.data.shape or not np.allclose(label.affine, volume.affine, atol=1e-3)
    ):
        raise RejectedVolume(grid_mismatch(label.data.shape, label.affine, volume.data.shape, volume.affine))
    decided = decide_modality(volume, modality, modality_source if modality else None, unknown_modality)
    modality = decided["modality"]
    image, affine = resample(volume.data, volume.affine, opts.spacing)
    image = cast_like(image, volume.data.dtype)
    norm = intensity_normalisation(image, modality, opts)
    mask = foreground_mask(image, norm)
    if not mask.any():
        raise RejectedVolume(f"no foreground: no voxel above {FOREGROUND_LEVEL} of the normalised range {norm}")
    box, affine, crop = crop_to_foreground(image, affine, mask, opts)
    image = np.ascontiguousarray(image[box])  # C order for the codec: one copy, of the kept voxels only
    if min(image.shape) < opts.min_shape:
        where = "after foreground crop" if crop else "after resampling"
        raise RejectedVolume(
            f"too small {where}: {list(image.shape)} voxels, an edge < preprocess.min_shape={opts.min_shape}"
        )
    offset = np.array([b.start or 0 for b in box])
    rng = np.random.default_rng(0)  # fixed: the same input always gives the same shard
    meta = {
        **decided,
        "orientation": axcodes(affine),
        "original_orientation": axcodes(volume.affine),
        "spacing": voxel_spacing(affine),
        "original_spacing": voxel_spacing(volume.affine),
        "shape": list(image.shape),
        "original_shape": list(volume.data.shape),
        "dtype": str(image.dtype),
        "affine": np.round(affine, 6).tolist(),
        "crop": crop,  # undo with voxfm.data.ingest.preprocess.uncrop
        "normalisation": norm,
        "foreground_points": foreground_points(mask, offset, opts.n_foreground_points, rng),
    }
    label_out = None
    if label is not None:
        resampled, _ = resample(label.data, label.affine, opts.spacing, label=True)
        label_out = np.rint(resampled[box]).astype(label_dtype(label.data))
        meta["label_classes"] = [int(v) for v in np.unique(label_out)]
    return image, label_out, meta
