"""`voxfm shard ... dry_run=true`: what a run would shard, per dataset, read from the layout and the headers only,
with nothing written: datasets and their layouts, inputs by modality and how it is decided, label pairs, and the
rejections a header or the layout already tells (a label map without its image, a 4D series, a spacing no scanner
makes, a file too large). Voxel-level verdicts (intensities, no foreground) and duplicates (content hashes) wait
for the run itself, which prints its own counts the same way.
"""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np

from voxfm.data.ingest.dicom import read_header
from voxfm.data.ingest.inputs import group_series, relative, strip_root
from voxfm.data.ingest.layouts import discover
from voxfm.data.ingest.preprocess import PreprocessOptions, grid_mismatch
from voxfm.data.ingest.tally import UNDECIDED, format_tally, intensities_warning, tally
from voxfm.data.ingest.units import check_nifti_header, frames_to_shard, rejection_reason
from voxfm.data.ingest.volumes import RejectedVolume


def _header_reason(vol, opts: PreprocessOptions) -> str | None:
    """Why a NIfTI input (and its label map) would be rejected from their headers alone, or None."""
    try:
        for frame in frames_to_shard(vol, opts.frames):
            check_nifti_header(vol.path, opts, frame)
    except Exception as err:
        return rejection_reason(err)
    if vol.label:
        try:
            check_nifti_header(vol.label, opts, None)
            image, label = nib.load(vol.path), nib.load(vol.label)
        except Exception as err:
            return f"label {relative(vol.label, vol.root)}: {rejection_reason(err)}"
        shape = image.shape[:3]
        if label.shape != shape or not np.allclose(label.affine, image.affine, atol=1e-3):
            return grid_mismatch(label.shape, label.affine, shape, image.affine)
    return None


def _dicom_headers(found) -> tuple[list, list[dict], list[str]]:
    scanned, rejected = [], []
    for file, template in found.dicom_files:
        try:
            scanned.append((file, template, read_header(file), ""))
        except RejectedVolume as err:
            rejected.append({"path": file, "reason": str(err)})
        except Exception as err:
            rejected.append({"path": file, "reason": rejection_reason(err)})
    series, no_image, segmentations = group_series(scanned)
    return [vol for vol, _ in series], rejected + segmentations, no_image


def plan_shard(
    input_path: str, preprocess: dict, layout: str = "auto", channels: str = "separate", output: str | None = None
) -> dict:
    """What `run_shard` would do with these settings, from layouts and headers; writes nothing. `output`: the shard
    set's folder, not read as input where it lies inside the input."""
    start = time.perf_counter()
    opts = PreprocessOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items()})
    found = discover(input_path, layout, channels, output)
    series, rejected, no_image = _dicom_headers(found)
    rejected = list(found.rejected) + rejected
    entries = []
    for vol in found.nifti:
        reason = _header_reason(vol, opts)
        if reason is not None:
            rejected.append({"path": vol.path, "reason": reason, "label": vol.label})
        else:
            entries.append(
                (vol.dataset, vol.modality or UNDECIDED, vol.modality_source or "intensities", bool(vol.label))
            )
    entries += [(v.dataset, v.modality or UNDECIDED, v.modality_source or "intensities", False) for v in series]
    return {
        "dry_run": True,
        "n_inputs": len(entries) + len(rejected),
        "n_would_shard": len(entries),
        **tally(entries, found.datasets),
        "n_rejected": len(rejected),
        "rejected": [
            {
                "path": relative(r["path"], found.root),
                "reason": strip_root(r["reason"], found.root, r["path"], r.get("label")),
            }
            for r in rejected
        ],
        "n_ignored": len(found.ignored) + len(no_image),
        "ignored": [relative(p, found.root) for p in found.ignored + no_image],
        "notes": [strip_root(n, found.root) for n in found.notes],
        "seconds": round(time.perf_counter() - start, 2),
    }


def format_plan(plan: dict, input_path: str) -> str:
    lines = [
        f"dry run, nothing written: input={input_path} holds {plan['n_inputs']} input(s) in "
        f"{len(plan['by_dataset'])} dataset(s); {plan['n_would_shard']} pass the layout and header checks "
        f"({plan['seconds']} s)",
        *format_tally(plan),
    ]
    if plan["rejected"]:
        lines.append(f"  rejected {plan['n_rejected']}:")
        lines += [f"    {r['path']}: {r['reason']}" for r in plan["rejected"]]
    if plan["n_ignored"]:
        lines.append(f"  ignored (not an image voxfm reads): {plan['n_ignored']} file(s)")
    lines += [f"  note: {n}" for n in plan["notes"]]
    lines.append("  duplicates (by content) and voxel checks (foreground, label-like voxels) are found when sharded")
    warning = intensities_warning(plan, decided=False)
    return "\n".join(lines + ([warning] if warning else []))
