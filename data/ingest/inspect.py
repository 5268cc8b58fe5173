"""`voxfm inspect shards=<dir>`: what a shard set holds, and a picture of some of it.

Writes `summary.json` (counts per modality, per way the modality was decided, and per dataset, spacing and shape
distributions, voxels and bytes, the rejections and ignored files of its report.json) and `montage.png` (random
samples: three orthogonal middle slices each with its orientation letters and its label map in colour, captioned
with the input's path, dataset, modality and its source, shape and spacing).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from voxfm.data.ingest import payload
from voxfm.data.ingest.montage import Row, montage
from voxfm.data.ingest.preprocess import normalise
from voxfm.data.ingest.safe_files import refuse_linked_folders, replacing, write_text_atomic
from voxfm.data.ingest.shard_set import INDEX, REPORT, load_index, read_samples
from voxfm.data.ingest.tally import source_of


def _distribution(values: list[list[float]]) -> dict:
    """Per axis: min, median, max."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        k: [round(float(v), 3) for v in f(arr, axis=0)]
        for k, f in (("min", np.min), ("median", np.median), ("max", np.max))
    }


def _counts(values) -> dict:
    """{value: count}, most common first, ties by value: index.json lists samples by subject pseudonym, salted at
    random per shard set, so first-seen order (`Counter.most_common`) would differ between equal shard sets."""
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], str(kv[0]))))


def summarise(index: dict, report: dict | None) -> dict:
    samples = index["samples"]
    if not samples:
        raise ValueError("the shard set holds no samples (see its report.json)")
    return {
        "n_samples": len(samples),
        "n_shards": len(index["shards"]),
        "bytes": int(sum(s["bytes"] for s in index["shards"])),
        "voxels": int(sum(int(np.prod(s["shape"], dtype=np.int64)) for s in samples)),
        "by_modality": _counts(s["modality"] for s in samples),
        "by_modality_source": _counts(source_of(s) for s in samples),
        "by_dataset": _counts(s.get("dataset", "") for s in samples),
        "spacing": _distribution([s["spacing"] for s in samples]),
        "original_spacing": _distribution([s["original_spacing"] for s in samples]),
        "shape": _distribution([s["shape"] for s in samples]),
        "original_orientation": _counts(s["original_orientation"] for s in samples),
        "with_label": sum(1 for s in samples if s.get("label_path")),
        "rejected_by_reason": (report or {}).get("rejected_by_reason"),
        "n_rejected": (report or {}).get("n_rejected"),
        "n_ignored": (report or {}).get("n_ignored"),
        "preprocess": (index.get("config") or {}).get("preprocess"),
    }


def _read(folder: Path, picked: list[dict]) -> list[tuple[dict, np.ndarray, np.ndarray | None]]:
    """(metadata, image [X, Y, Z], label map [X, Y, Z] or None) of each picked sample."""
    out = []
    for s, parts in read_samples(folder, picked, ("json", "image.b2", "label.b2")):
        meta = json.loads(parts["json"]) | {"key": s["key"]}
        label = parts["label.b2"]
        out.append(
            (
                meta,
                payload.decode(parts["image.b2"], meta.get("shape")),
                None if label is None else payload.decode(label, meta.get("shape")),
            )
        )
    return out


def caption(meta: dict) -> tuple[str, str]:
    """A montage row's two lines: the input's path under its input root (the key where the metadata has none),
    then dataset | modality (how it was decided) | shape | spacing | the label's classes."""
    title = str(meta.get("source_path") or meta["key"])
    if meta.get("frame") is not None:
        title += f" (frame {meta['frame']})"
    source = source_of(meta)
    details = [
        str(meta.get("dataset") or "-"),
        f"{meta['modality']} ({'source not recorded' if source == 'unrecorded' else source})",
        "x".join(str(n) for n in meta["shape"]) + " voxels",
        "x".join(f"{v:g}" for v in meta["spacing"]) + " mm",
    ]
    if meta.get("label_path"):
        classes = [c for c in meta.get("label_classes", []) if c != 0]
        details.append("label " + (",".join(str(c) for c in classes) or "empty"))
    return title, "  |  ".join(details)


def format_summary(summary: dict) -> str:
    gb = summary["bytes"] / 1e9
    lines = [
        f"{summary['n_samples']} samples in {summary['n_shards']} shard(s), {gb:.3f} GB, "
        f"{summary['voxels'] / 1e9:.3f} G voxels",
        f"modalities: {summary['by_modality']}",
        "modality decided by: " + ", ".join(f"{k} {n}" for k, n in summary["by_modality_source"].items()),
        f"datasets: {summary['by_dataset']}",
        f"spacing (mm) min/median/max: {summary['spacing']['min']} / {summary['spacing']['median']} / "
        f"{summary['spacing']['max']}",
        f"shape (voxels) min/median/max: {summary['shape']['min']} / {summary['shape']['median']} / "
        f"{summary['shape']['max']}",
        f"original orientations: {summary['original_orientation']}",
    ]
    guessed = summary["by_modality_source"].get("intensities", 0)
    if guessed:  # first, where it is seen: a wrong guess normalises a volume the wrong way
        lines.insert(
            0,
            f"WARNING: the modality of {guessed} of {summary['n_samples']} samples was guessed from voxel "
            "intensities, not read from a manifest, DICOM header, dataset.json or BIDS name; check them in "
            "montage.png, or name it in a manifest's modality column",
        )
    if summary["rejected_by_reason"] is not None:
        lines.append(f"rejected {summary['n_rejected']}, ignored {summary['n_ignored']} file(s)")
        lines += [f"  {count:>6}  {reason}" for reason, count in summary["rejected_by_reason"].items()]
    return "\n".join(lines)


def inspect_shards(shards: str, output: str | None, n_samples: int = 8, seed: int = 0) -> dict:
    folder = Path(shards)
    if not (folder / INDEX).exists():
        raise ValueError(f"shards={shards}: no {INDEX} here; inspect a folder made by `voxfm shard`")
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples}: expected >= 1")
    index = load_index(folder)  # checked: plain shard names, the expected structure
    report = json.loads((folder / REPORT).read_text()) if (folder / REPORT).exists() else None
    summary = summarise(index, report)
    out = Path(output) if output else folder / "inspect"
    if Path(os.path.abspath(out)).is_relative_to(os.path.abspath(folder)):  # inside a received shard set: no link
        refuse_linked_folders(folder, [os.path.relpath(os.path.abspath(out), os.path.abspath(folder))])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    picked = [
        index["samples"][i]
        for i in sorted(rng.choice(len(index["samples"]), min(n_samples, len(index["samples"])), replace=False))
    ]
    rows = [Row(*caption(m), normalise(vol, m["normalisation"]), label) for m, vol, label in _read(folder, picked)]
    with replacing(out / "montage.png", "wb") as f:
        montage(rows).save(f, format="PNG")
    summary["montage"] = str(out / "montage.png")
    summary["montage_samples"] = [m["key"] for m in picked]
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    return summary
