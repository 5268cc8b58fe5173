"""Labelled volumes for fine-tuning: read from a shard set made by `voxfm shard` from a manifest with labels,
split into train/validation by subject, labels mapped to 0..K-1, crops for training.

Fine-tuning sets are small (tens to hundreds of volumes): they are decoded once and kept in memory.
With a single subject there is nothing to split by, so the volume itself is split along its S axis
(train below the middle, validate above): no voxel is both trained on and validated, stated in results.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from voxfm.data.ingest import payload
from voxfm.data.ingest.preprocess import normalise
from voxfm.data.ingest.shard_set import load_index, read_samples
from voxfm.data.stream.crops import crop_start, pad_to, triple


@dataclass
class Labelled:
    key: str
    subject: str
    image: np.ndarray  # [X, Y, Z] float32 in [0, 1]
    label: np.ndarray  # [X, Y, Z] int64 in 0..K-1


def read_labelled(shards: str) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """(metadata, normalised image, raw label) of every sample with a label map, in index order."""
    folder = Path(shards)
    if not (folder / "index.json").exists():
        raise ValueError(
            f"data.shards={shards}: no index.json; make the shard set with `voxfm shard` from a "
            "manifest with a `label` column"
        )
    labelled = [s for s in load_index(folder)["samples"] if s.get("label_path")]
    out, skipped = [], 0
    for s, parts in read_samples(folder, labelled, ("json", "image.b2", "label.b2")):
        try:  # a damaged sample (image or label map) is skipped with its reason, as pretraining's stream does
            meta = json.loads(parts["json"])
            image = normalise(payload.decode(parts["image.b2"], meta["shape"]), meta["normalisation"])
            label = checked_label(payload.decode(parts["label.b2"], meta["shape"]))
        except (ValueError, TypeError, KeyError) as err:
            skipped += 1
            print(f"voxfm: skipped damaged sample {s['key']}: {err}", file=sys.stderr, flush=True)
            continue
        out.append((meta | {"key": s["key"]}, image, label))
    if skipped:
        print(f"voxfm: warning: {skipped} of {len(labelled)} labelled sample(s) skipped as damaged", file=sys.stderr)
    if not out:
        raise ValueError(
            f"data.shards={shards}: no sample has a label map; shard images with their labels (x.nii.gz beside "
            "x_seg.nii.gz, nnU-Net's labelsTr/, BIDS derivatives, or a manifest's `label` column)"
        )
    return out


def _bucket(subject: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(samples: list, val_fraction: float, seed: int, n_train: int | None) -> tuple[list, list, str]:
    """→ (train, validation, how). By subject (a subject's volumes stay together), deterministic in `seed`;
    `n_train` keeps the first K training volumes (few-shot); one subject → an S-axis split of each volume."""
    subjects = sorted({m["subject"] for m, _, _ in samples})
    if len(subjects) < 2:
        train, val = [], []
        for meta, image, label in samples:
            mid = image.shape[2] // 2
            train.append((meta, image[:, :, :mid], label[:, :, :mid]))
            val.append((meta, image[:, :, mid:], label[:, :, mid:]))
        return train[:n_train] if n_train else train, val, "one subject: train on z < middle, validate on z >= middle"
    ranked = sorted(subjects, key=lambda s: _bucket(s, seed))
    n_val = min(max(1, round(val_fraction * len(subjects))), len(subjects) - 1)
    val_subjects = set(ranked[:n_val])
    train = [s for s in samples if s[0]["subject"] not in val_subjects]
    val = [s for s in samples if s[0]["subject"] in val_subjects]
    how = f"by subject: {len(subjects) - n_val} train, {n_val} validation"
    return (train[:n_train] if n_train else train), val, how


MAX_CLASSES = 1000  # more distinct values than this is not a segmentation (an image sharded as a label map?)


def checked_label(label: np.ndarray) -> np.ndarray:
    """A label map holds non-negative whole numbers: NaN, fractions or negatives make it a damaged sample."""
    if not np.issubdtype(label.dtype, np.integer):
        if not np.isfinite(label).all() or not np.array_equal(label, np.round(label)):
            raise ValueError("label map: non-integer or non-finite values")
    if label.size and label.min() < 0:
        raise ValueError(f"label map: negative value {label.min()}")
    return label


def label_values(samples: list) -> list[int]:
    values = sorted({int(v) for _, _, label in samples for v in np.unique(label)} | {0})
    if len(values) > MAX_CLASSES:
        raise ValueError(f"the label maps hold {len(values)} distinct values (at most {MAX_CLASSES} classes)")
    return values


def to_labelled(samples: list, values: list[int]) -> list[Labelled]:
    out = []
    for meta, image, label in samples:
        mapped = np.searchsorted(np.asarray(values), label).astype(np.int64)  # values are sorted and cover the label
        out.append(
            Labelled(
                meta["key"],
                meta["subject"],
                np.ascontiguousarray(image, dtype=np.float32),
                np.ascontiguousarray(mapped),
            )
        )
    return out


class CropStream(IterableDataset):
    """Endless (image, label) crops [1, X, Y, Z] from the training volumes: centred on a labelled voxel with
    probability `foreground_prob`, random flips of each axis."""

    def __init__(self, volumes: list[Labelled], crop_size, foreground_prob: float = 0.67, seed: int = 0):
        self.volumes, self.size, self.foreground_prob, self.seed = volumes, triple(crop_size), foreground_prob, seed
        self.foreground = [np.argwhere(v.label > 0)[:: max(1, int(np.count_nonzero(v.label) // 4096))] for v in volumes]

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        while True:
            i = int(rng.integers(len(self.volumes)))
            vol, fg = self.volumes[i], self.foreground[i]
            pads = np.array([max(s - d, 0) // 2 for d, s in zip(vol.image.shape, self.size)])
            image, label = pad_to(vol.image, self.size, 0.0), pad_to(vol.label, self.size, 0)
            centre = fg[rng.integers(len(fg))] + pads if len(fg) and rng.random() < self.foreground_prob else None
            x, y, z = crop_start(image.shape, self.size, centre, rng)
            box = (slice(x, x + self.size[0]), slice(y, y + self.size[1]), slice(z, z + self.size[2]))
            img, lab = image[box], label[box]
            for axis in range(3):
                if rng.random() < 0.5:
                    img, lab = np.flip(img, axis), np.flip(lab, axis)
            yield torch.from_numpy(img.copy())[None], torch.from_numpy(lab.copy())[None]
