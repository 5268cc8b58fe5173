"""One webdataset sample → a decoded volume and the regions cut from it, in a data-loader worker.

A sample's metadata is checked where it is read (`sample_meta`), a float volume's voxels once it is decoded
(`check_finite`), so a damaged sample is skipped and counted by the stream (`data/stream/regions.py`) rather than
failing later. The volume stays in its stored dtype (int16 for CT), padded to at least the region size; each region
is a view of it with its volume's normalisation record (`region_record`), copied once when its batch is stacked
(`data/stream/batches.py`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from voxfm.data.ingest import payload
from voxfm.data.ingest.preprocess import SHARDED_MODALITIES, normalise
from voxfm.data.stream.crops import padded, random_crop, triple
from voxfm.data.stream.pool import Volume

# torch cannot promote these when a batch mixes dtypes: widened losslessly per region
UNPROMOTABLE = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sample_meta(raw: bytes) -> dict:
    """A sample's JSON, with every field the stream and the training step use checked here, so a damaged sample
    is skipped and counted where it is read, never failing later in collation or a callback: a modality in
    `SHARDED_MODALITIES`, finite normalisation with low < high, a 3-D shape, foreground points as [x, y, z]."""
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError(f"metadata: expected a JSON object, got {type(meta).__name__}")
    if not isinstance(meta.get("modality"), str) or meta["modality"] not in SHARDED_MODALITIES:
        raise ValueError(f"metadata: modality={meta.get('modality')!r}; allowed: {', '.join(SHARDED_MODALITIES)}")
    norm = meta.get("normalisation")
    low, high = (norm.get("low"), norm.get("high")) if isinstance(norm, dict) else (None, None)
    # in float32, as the step computes (x - low) / (high - low): a window narrower than float32 can tell is 0/0
    if not (_number(low) and _number(high) and np.float32(low) < np.float32(high)):
        raise ValueError(f"metadata: normalisation low={low!r}, high={high!r}; expected finite numbers, low < high")
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) and n >= 1 for n in shape)):
        raise ValueError(f"metadata: shape={shape!r}; expected 3 positive integers")
    points = meta.get("foreground_points")
    if not (
        isinstance(points, list)
        and all(
            isinstance(p, list) and len(p) == 3 and all(isinstance(c, int) and not isinstance(c, bool) for c in p)
            for p in points
        )
    ):
        raise ValueError("metadata: foreground_points must be a list of [x, y, z] integer voxel coordinates")
    return meta


def check_finite(vol: np.ndarray) -> None:
    """A float volume with a NaN or ±inf voxel is refused: each region cut from it would make its batch's loss
    non-finite for as long as the pool holds it (skipped steps, then `Diverged`), on every rerun. Once per decoded
    volume, one pass without a temporary: NaN and ±inf survive a float64 sum, which a float16/32 volume cannot
    overflow."""
    if vol.dtype.kind == "f" and not np.isfinite(vol.sum(dtype=np.float64)):
        bad = vol.size - np.count_nonzero(np.isfinite(vol))
        raise ValueError(f"non-finite voxels: {bad} of {vol.size} are NaN or ±inf")


def decode_volume(sample: dict, max_sample_mb: float = payload.MAX_SAMPLE_MB) -> tuple[np.ndarray, dict]:
    """Raw webdataset sample → (volume [X, Y, Z] in its stored dtype, checked metadata); the payload is checked
    against the metadata's shape and the byte budget before it is decoded, its voxels (`check_finite`) after."""
    meta = sample_meta(sample["json"])
    vol = payload.decode(sample["image.b2"], meta["shape"], max_sample_mb)
    check_finite(vol)
    return vol, meta


def decode_sample(sample: dict, max_sample_mb: float = payload.MAX_SAMPLE_MB) -> tuple[np.ndarray, dict]:
    """Raw webdataset sample → (normalised float32 volume [X, Y, Z] in [0, 1], metadata)."""
    vol, meta = decode_volume(sample, max_sample_mb)
    return normalise(vol, meta["normalisation"]), meta


def load_volume(sample: dict, region_size, max_sample_mb: float = payload.MAX_SAMPLE_MB, source: int = 0) -> Volume:
    """One raw webdataset sample → a decoded `Volume` to cut regions from: stored dtype in native byte order, padded
    to at least `region_size` with the volume's background level."""
    vol, meta = decode_volume(sample, max_sample_mb)
    norm = meta["normalisation"]
    if not vol.dtype.isnative:  # e.g. big-endian NIfTI sharded before the writer made it native: torch refuses it
        vol = vol.astype(vol.dtype.newbyteorder("="))
    vol, points = padded(vol, meta["foreground_points"], triple(region_size), norm["low"])
    return Volume(
        vol,
        points,
        float(norm["low"]),
        float(norm["high"]),
        meta["modality"],
        source,
        f"{sample.get('__url__')}#{sample.get('__key__')}",
    )


def region_record(region: np.ndarray, volume: Volume) -> dict:
    """A region (a view of its volume: the batch collation is its only copy) with what the step needs of its volume.
    Measured on the real scans, a copy per region doubled a worker's time (fresh pages for every 1.8 MB region)."""
    wide = UNPROMOTABLE.get(region.dtype)
    return {
        "region": torch.from_numpy(region if wide is None else region.astype(wide))[None],
        "low": volume.low,
        "high": volume.high,
        "modality": volume.modality,
        "source": volume.source,
        "volume": volume.key,
    }


def cut_regions(
    sample: dict,
    region_size,
    n: int,
    foreground_prob: float,
    rng: np.random.Generator,
    max_sample_mb: float = payload.MAX_SAMPLE_MB,
) -> list[dict]:
    """One raw webdataset sample → `n` regions {"region": [1, X, Y, Z] stored dtype, "low", "high", "modality", ...}
    cut at once (the path without a volume pool, `data.pool_gib=0`)."""
    volume = load_volume(sample, region_size, max_sample_mb)
    return [
        region_record(random_crop(volume.array, volume.points, triple(region_size), foreground_prob, rng), volume)
        for _ in range(n)
    ]
