"""A CT-sized synthetic corpus for the feed benchmarks: body phantoms at a typical clinical CT grid and spacing.

usage: python scripts/make_ct_corpus.py <output_dir> [n_volumes=8] [shape=512,512,300] [spacing=0.7,0.7,1.5]
Writes <output_dir>/ct*.nii.gz (int16 HU, RAS) and <output_dir>/manifest.csv. Bytes per region, regions per
volume read and decode cost are then measured on the volumes users have (`voxfm shard`, `voxfm bench data`), not
on small test scans. Each 512×512×300 volume takes ~10 s and ~3 GB of memory to make.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from voxfm.data.phantoms import ct_phantom


def main(output: str, n: int = 8, shape=(512, 512, 300), spacing=(0.7, 0.7, 1.5)) -> Path:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = out / f"ct{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(ct_phantom(tuple(shape), rng), np.diag([*spacing, 1.0])), path)
        rows.append({"path": str(path.resolve()), "modality": "CT", "dataset": "ct_phantoms", "subject": path.stem})
        print(f"  {path.name}: {list(shape)} at {list(spacing)} mm", flush=True)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "modality", "dataset", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"CT corpus: {n} volumes listed in {manifest}")
    return manifest


def _triple(text: str, kind):
    return tuple(kind(v) for v in text.split(","))


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if args else 2)
    main(
        args[0],
        int(args[1]) if len(args) > 1 else 8,
        _triple(args[2], int) if len(args) > 2 else (512, 512, 300),
        _triple(args[3], float) if len(args) > 3 else (0.7, 0.7, 1.5),
    )
