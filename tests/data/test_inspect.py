import json

import numpy as np
from PIL import Image

from voxfm.pretrain.cli.main import main


def test_inspect_writes_a_summary_and_a_montage_of_non_empty_slices(shard_dir, tmp_path, capsys):
    assert main(["inspect", f"shards={shard_dir}", f"output={tmp_path}", "n_samples=4"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    index = json.loads((shard_dir / "index.json").read_text())
    assert summary["n_samples"] == len(index["samples"]) == 6
    assert summary["by_modality"] == {"CT": 3, "MR": 3}
    assert summary["spacing"]["median"] == [1.5, 1.5, 1.5] and summary["rejected_by_reason"] == {}
    assert summary["bytes"] == sum(s["bytes"] for s in index["shards"]) and summary["voxels"] > 0
    assert "6 samples in 1 shard(s)" in out and "modalities: {'CT': 3, 'MR': 3}" in out
    picture = np.asarray(Image.open(tmp_path / "montage.png"))
    assert len(summary["montage_samples"]) == 4
    rows = np.array_split(picture, 4, axis=0)
    for row in rows:  # every sample's three slices show structure, not a blank tile
        for tile in np.array_split(row[20:], 3, axis=1):
            assert tile.std() > 10


def test_inspect_needs_a_shard_set(tmp_path, capsys):
    assert main(["inspect", f"shards={tmp_path}"]) == 2
    assert "no index.json" in capsys.readouterr().err
