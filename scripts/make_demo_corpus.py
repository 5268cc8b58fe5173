"""Build the demo corpus: synthetic phantoms + the real NIfTI volumes that nibabel ships in its tests.

usage: python scripts/make_demo_corpus.py <output_dir> [n_phantoms]
Writes <output_dir>/phantoms/*.nii.gz, <output_dir>/nibabel/*.nii* and <output_dir>/manifest.csv.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import nibabel

from voxfm.data.phantoms import write_phantoms

# anatomical.nii: a real T1 MR; example4d.nii.gz: a 4D fMRI run, which `voxfm shard` rejects with a reason.
NIBABEL_FILES = {"anatomical.nii": "MR", "example4d.nii.gz": "MR"}


def main(output: str, n_phantoms: int = 12) -> Path:
    out = Path(output)
    rows = []
    for path in write_phantoms(out / "phantoms", n_phantoms):
        modality = "CT" if path.name.endswith("_ct.nii.gz") else "MR"
        label = path.with_name(path.name.replace(".nii.gz", "_label.nii.gz"))
        rows.append(
            {
                "path": str(path.resolve()),
                "modality": modality,
                "dataset": "phantoms",
                "subject": path.name.split("_")[0],
                "label": str(label.resolve()),
            }
        )
    source = Path(nibabel.__file__).parent / "tests" / "data"
    (out / "nibabel").mkdir(parents=True, exist_ok=True)
    for name, modality in NIBABEL_FILES.items():
        shutil.copy(source / name, out / "nibabel" / name)
        rows.append(
            {
                "path": str((out / "nibabel" / name).resolve()),
                "modality": modality,
                "dataset": "nibabel",
                "subject": name.split(".")[0],
                "label": "",
            }
        )
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "modality", "dataset", "subject", "label"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"demo corpus: {len(rows)} volumes listed in {manifest}")
    return manifest


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12)
