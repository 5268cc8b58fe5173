"""The CT-sized benchmark corpus (scripts/make_ct_corpus.py): body-like CT in HU at the grid and spacing asked for,
listed in a manifest that `voxfm shard` reads."""

import csv
import subprocess
import sys

import nibabel as nib
import numpy as np

from tests.conftest import REPO


def test_ct_corpus_writes_int16_hu_volumes_at_the_asked_grid_and_spacing(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_ct_corpus.py"), str(tmp_path), "2", "64,48,20", "0.7,0.7,1.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv")))
    assert [r["modality"] for r in rows] == ["CT", "CT"]
    for row in rows:
        img = nib.load(row["path"])
        data = np.asarray(img.dataobj)
        assert img.shape == (64, 48, 20) and data.dtype == np.int16
        assert np.allclose(img.header.get_zooms(), (0.7, 0.7, 1.5))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert data.min() >= -1024 and data.max() <= 3071
        assert (data < -900).mean() > 0.1 and ((data > -200) & (data < 200)).mean() > 0.2  # air and soft tissue
        assert (data > 400).any()  # bone
