"""`voxfm bench ingest`: voxfm's per-volume ingest vs MONAI's LoadImage → Orientation → Spacing, side by side
on the same files, one core each (one thread for numpy, torch and blosc2), best of `repeats` per volume.

voxfm's line is everything `voxfm shard` does per input — hash, read, reorient, resample, normalisation
record, foreground crop and points, encode — so it does more than MONAI's line, which stops at the
resampled tensor. Storage: the encoded payloads vs nibabel's .nii.gz of the same stored arrays.
"""

from __future__ import annotations

import os
import tempfile

import nibabel as nib
import numpy as np

from voxfm.data.ingest import payload
from voxfm.data.ingest.inputs import file_hash
from voxfm.data.ingest.layouts import discover
from voxfm.data.ingest.preprocess import PreprocessOptions
from voxfm.data.ingest.units import process_unit
from voxfm.pretrain.errors import ConfigError
from voxfm.pretrain.runtime.timing import best_time


def _single_core() -> None:
    import blosc2
    import torch

    torch.set_num_threads(1)
    blosc2.set_nthreads(1)


def _gz_bytes(arr: np.ndarray) -> int:
    """Size of the array saved as .nii.gz with nibabel's defaults."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "v.nii.gz")
        nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
        return os.path.getsize(path)


def bench_ingest(input_path: str, max_volumes: int, repeats: int, spacing) -> dict:
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, Spacing

    _single_core()
    volumes = discover(input_path).nifti[:max_volumes]
    if not volumes:
        raise ConfigError(f"input={input_path}: no NIfTI volumes to benchmark")
    opts = PreprocessOptions(spacing=tuple(spacing))
    monai = Compose(
        [
            LoadImage(image_only=True),
            EnsureChannelFirst(),
            Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacing(pixdim=tuple(spacing), mode="bilinear"),
        ]
    )
    rows, stored, gz = [], 0, 0
    for vol in volumes:
        runs: list = []  # each run's result, to read the outcome from (an append is nothing next to an ingest)
        t_voxfm = best_time(
            lambda v=vol, out=runs: out.append(process_unit([(v, file_hash(v.path))], opts, "lz4hc")), repeats
        )
        t_monai = best_time(lambda v=vol: monai(v.path), repeats)
        ((_, _, outcome),) = runs[-1]
        if isinstance(outcome, str):
            rows.append({"path": vol.path, "rejected": outcome})
            continue
        _, files, meta = outcome[0]
        stored += len(files["image.b2"])
        gz += _gz_bytes(payload.decode(files["image.b2"]))
        rows.append(
            {
                "path": os.path.basename(vol.path),
                "shape": meta["original_shape"],
                "voxfm_s": round(t_voxfm, 4),
                "monai_s": round(t_monai, 4),
            }
        )
    timed = [r for r in rows if "voxfm_s" in r]
    voxfm_s, monai_s = sum(r["voxfm_s"] for r in timed), sum(r["monai_s"] for r in timed)
    return {
        "volumes": len(timed),
        "voxfm_volumes_per_s_per_core": round(len(timed) / voxfm_s, 2),
        "monai_volumes_per_s_per_core": round(len(timed) / monai_s, 2),
        "speedup": round(monai_s / voxfm_s, 2),
        "storage_vs_nii_gz": round(gz / stored, 3) if stored else None,
        "per_volume": rows,
    }


def format_ingest_bench(result: dict) -> str:
    lines = [f"{'volume':<36} {'shape':<18} {'voxfm s':>8} {'MONAI s':>8}"]
    for r in result["per_volume"]:
        if "voxfm_s" in r:
            lines.append(f"{r['path']:<36} {str(r['shape']):<18} {r['voxfm_s']:>8.3f} {r['monai_s']:>8.3f}")
        else:
            lines.append(f"{os.path.basename(r['path']):<36} rejected: {r['rejected']}")
    lines.append(
        f"per core: voxfm {result['voxfm_volumes_per_s_per_core']} volumes/s, MONAI LoadImage → Orientation → "
        f"Spacing {result['monai_volumes_per_s_per_core']} volumes/s ({result['speedup']}x); stored payload "
        f"{result['storage_vs_nii_gz']}x smaller than .nii.gz of the same arrays"
    )
    return "\n".join(lines)
