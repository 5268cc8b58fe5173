import json

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw

from voxfm.data.ingest import payload
from voxfm.data.ingest.inspect import caption, format_summary, inspect_shards
from voxfm.data.ingest.montage import (
    CAPTION_PX,
    FONT,
    PAD,
    PALETTE,
    TEXT,
    VIEWS,
    Row,
    edge_letters,
    fit_text,
    montage,
    overlay,
)
from voxfm.data.ingest.run import run_shard
from voxfm.data.ingest.shard_set import ShardSetWriter, load_index
from voxfm.pretrain.cli.main import main

TILE = 160  # inspect's montage tile
ROW_PX = CAPTION_PX + TILE + 2 * PAD


def _coloured(pixels: np.ndarray) -> int:
    """How many RGB pixels are clearly not grey."""
    return int((pixels.max(axis=-1).astype(int) - pixels.min(axis=-1) > 30).sum())


def _sample_meta(i: int, **fields) -> dict:
    return {
        "modality": "MR",
        "shape": [16, 18, 20],
        "spacing": [1.5, 1.5, 1.5],
        "original_spacing": [1.0, 1.0, 2.0],
        "original_orientation": "RAS",
        "normalisation": {"scheme": "percentile", "low": 0.0, "high": 1.0},
        "dataset": "ds",
        "source_path": f"ds/sub-{i}/anat/sub-{i}_T1w.nii.gz",
        "label_path": None,
    } | fields


def _write_shard_set(folder, metas: list[dict]) -> None:
    """A shard set as `voxfm shard` writes it, of random volumes with the given metadata."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    writer = ShardSetWriter(folder, load_index(folder), max_bytes=2**30)
    for i, meta in enumerate(metas):
        image = rng.random(meta["shape"], dtype=np.float32)
        writer.add(f"s{i:03d}", {"image.b2": payload.encode(image), "json": json.dumps(meta).encode()}, meta)
        writer.end_group()
    writer.flush()


def test_inspect_writes_a_summary_and_a_montage_of_non_empty_slices(shard_dir, tmp_path, capsys):
    assert main(["inspect", f"shards={shard_dir}", f"output={tmp_path}", "n_samples=4"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    index = json.loads((shard_dir / "index.json").read_text())
    assert summary["n_samples"] == len(index["samples"]) == 6
    assert summary["by_modality"] == {"CT": 3, "MR": 3} and sum(summary["by_modality_source"].values()) == 6
    assert summary["spacing"]["median"] == [1.5, 1.5, 1.5] and summary["rejected_by_reason"] == {}
    assert summary["bytes"] == sum(s["bytes"] for s in index["shards"]) and summary["voxels"] > 0
    assert "6 samples in 1 shard(s)" in out and "modalities: {'CT': 3, 'MR': 3}" in out
    assert "modality decided by: " in out
    picture = np.asarray(Image.open(tmp_path / "montage.png"))
    assert len(summary["montage_samples"]) == 4 and picture.shape == (4 * ROW_PX, 3 * (TILE + 2 * PAD), 3)
    for r in range(4):  # every sample's three slices show structure, not a blank tile
        for v in range(3):
            tile = picture[r * ROW_PX + CAPTION_PX + PAD :, v * (TILE + 2 * PAD) + PAD :][:TILE, :TILE]
            assert tile.std() > 10


def test_labelled_rows_show_their_classes_in_colour_and_unlabelled_rows_stay_grey(phantom_dir, tmp_path):
    manifest = tmp_path / "m.csv"
    rows = ["path,modality,dataset,label"]
    for i, name in enumerate(["phantom000_ct", "phantom001_mr", "phantom002_ct", "phantom003_mr"]):
        label = f"{phantom_dir}/{name}_label.nii.gz" if i < 2 else ""
        rows.append(f"{phantom_dir}/{name}.nii.gz,{name[-2:].upper()},ds,{label}")
    manifest.write_text("\n".join(rows) + "\n")
    shards = tmp_path / "shards"
    assert run_shard(str(manifest), str(shards), {}, progress=False)["n_sharded"] == 4
    summary = inspect_shards(str(shards), str(tmp_path / "out"), n_samples=4)
    assert summary["with_label"] == 2
    labelled = {s["key"]: bool(s.get("label_path")) for s in load_index(shards)["samples"]}
    picture = np.asarray(Image.open(summary["montage"]))
    assert picture.ndim == 3 and picture.shape[-1] == 3
    for r, key in enumerate(summary["montage_samples"]):
        views = picture[r * ROW_PX + CAPTION_PX : (r + 1) * ROW_PX]  # below the caption: slices and letters
        if labelled[key]:  # body, organ and maybe lesion: every view shows some of them, in colour
            assert all(_coloured(views[:, v * (TILE + 2 * PAD) :][:, : TILE + 2 * PAD]) > 500 for v in range(3))
        else:
            assert _coloured(picture[r * ROW_PX : (r + 1) * ROW_PX]) == 0
    assert sorted(labelled.values()) == [False, False, True, True]


def test_overlay_tints_and_outlines_each_class_and_leaves_the_background_grey():
    grey = np.full((10, 10), 100, np.uint8)
    label = np.zeros((10, 10), np.int32)
    label[2:8, 2:8] = 1
    label[4:6, 4:6] = 3
    rgb = overlay(grey, label).astype(int)
    assert (rgb[label == 0] == 100).all() and (overlay(grey, None) == 100).all()
    assert (rgb[2, 2:8] == PALETTE[0]).all()  # the outline: the class's own colour
    assert _coloured(rgb[3:7, 3:7].astype(np.uint8)) == 16  # inside: tinted, class 3 outlined in its colour
    assert (rgb[4, 4] == PALETTE[2]).all() and (rgb[3, 3] != PALETTE[0]).any()


def _glyph(letter: str) -> np.ndarray:
    """The letter as the montage draws it: its inked box, red channel."""
    img = Image.new("RGB", (40, 40))
    ImageDraw.Draw(img).text((10, 10), letter, fill=TEXT, font=FONT)
    ink = np.asarray(img)[..., 0]
    ys, xs = np.nonzero(ink)
    return ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _find(picture: np.ndarray, letter: str) -> list[tuple[float, float]]:
    """Centres (row, column) of every place the letter is drawn in a greyscale picture."""
    glyph = _glyph(letter)
    hits = np.argwhere((sliding_window_view(picture, glyph.shape) == glyph).all(axis=(-2, -1)))
    return [(r + glyph.shape[0] / 2, c + glyph.shape[1] / 2) for r, c in hits]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_each_views_letters_name_the_side_a_volume_is_bright_on(axis):
    """A volume bright only at the high end of X (right), Y (anterior) or Z (superior) shows its bright half, in
    every view that cuts along that axis, on the edge lettered R, A or S; the opposite letter is across from it."""
    vol = np.zeros((24, 28, 32), np.float32)
    vol[(slice(None),) * axis + (slice(vol.shape[axis] * 3 // 4, None),)] = 1.0
    picture = np.asarray(montage([Row("", "", vol)], tile=TILE))[CAPTION_PX:, :, 0]
    high, low = "RAS"[axis], "LPI"[axis]
    for v, (_, across, up) in enumerate(VIEWS):
        view = picture[:, v * (TILE + 2 * PAD) : (v + 1) * (TILE + 2 * PAD)]
        letters = {letter: _find(view, letter) for letter in "RLAPSI"}
        assert sorted(letter for letter, at in letters.items() if at) == sorted(edge_letters(v).values())
        assert all(len(at) == 1 for at in letters.values() if at)
        if axis not in (across, up):
            assert not letters[high] and not letters[low]
            continue
        bright = np.argwhere(view > 200).mean(axis=0)
        (high_at,), (low_at,) = letters[high], letters[low]
        assert np.linalg.norm(bright - high_at) < np.linalg.norm(bright - low_at) - TILE / 4


def test_edge_letters_follow_the_drawn_axes():
    assert edge_letters(0) == {"left": "L", "right": "R", "top": "A", "bottom": "P"}  # axial: X left → right, Y up
    assert edge_letters(1) == {"left": "L", "right": "R", "top": "S", "bottom": "I"}
    assert edge_letters(2) == {"left": "P", "right": "A", "top": "S", "bottom": "I"}


def test_captions_name_the_input_its_dataset_modality_source_shape_and_spacing():
    meta = _sample_meta(7, modality_source="bids", key="k", label_path="x_dseg.nii.gz", label_classes=[0, 1, 3])
    assert caption(meta) == (
        "ds/sub-7/anat/sub-7_T1w.nii.gz",
        "ds  |  MR (bids)  |  16x18x20 voxels  |  1.5x1.5x1.5 mm  |  label 1,3",
    )
    old = _sample_meta(1, modality_inferred=False, key="k", source_path=None, dataset="", frame=2)
    assert caption(old) == ("k (frame 2)", "-  |  MR (source not recorded)  |  16x18x20 voxels  |  1.5x1.5x1.5 mm")
    path = "a/very/long/folder/name/" * 8 + "sub-1_T1w.nii.gz"
    short = fit_text(path, 200)
    assert short.startswith("...") and short.endswith("/sub-1_T1w.nii.gz") and FONT.getlength(short) <= 200
    assert fit_text("short", 200) == "short" and fit_text(path, 200, keep_end=False).startswith("a/very/")


def test_the_summary_counts_how_each_modality_was_decided_and_flags_guesses(tmp_path, capsys):
    sources = ["dataset.json"] * 3 + ["intensities"] * 2 + ["bids"]
    _write_shard_set(tmp_path / "s", [_sample_meta(i, modality_source=s) for i, s in enumerate(sources)])
    summary = inspect_shards(str(tmp_path / "s"), str(tmp_path / "out"), n_samples=2)
    assert summary["by_modality_source"] == {"dataset.json": 3, "intensities": 2, "bids": 1}
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["by_modality_source"] == summary["by_modality_source"]
    lines = format_summary(summary).splitlines()
    assert lines[0].startswith("WARNING: the modality of 2 of 6 samples was guessed from voxel intensities")
    assert "modality decided by: dataset.json 3, intensities 2, bids 1" in lines
    _write_shard_set(tmp_path / "t", [_sample_meta(i, modality_source="manifest") for i in range(2)])
    text = format_summary(inspect_shards(str(tmp_path / "t"), str(tmp_path / "out2")))
    assert "WARNING" not in text and "modality decided by: manifest 2" in text


def test_shard_sets_older_than_modality_source_still_inspect(tmp_path, capsys):
    metas = [
        _sample_meta(0, modality_inferred=True, modality="CT", normalisation={"low": -1000.0, "high": 1000.0}),
        _sample_meta(1, modality_inferred=False),
        _sample_meta(2, modality="unknown"),  # neither field: how its modality was decided is not known
    ]
    _write_shard_set(tmp_path / "s", metas)
    assert main(["inspect", f"shards={tmp_path / 's'}", f"output={tmp_path / 'out'}"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["by_modality_source"] == {"unrecorded": 2, "intensities": 1}
    assert summary["by_modality"] == {"CT": 1, "MR": 1, "unknown": 1} and len(summary["montage_samples"]) == 3
    out = capsys.readouterr().out
    assert "modality decided by: unrecorded 2, intensities 1" in out and "WARNING: the modality of 1 of 3" in out
    picture = np.asarray(Image.open(tmp_path / "out" / "montage.png"))
    assert picture.shape[0] == 3 * ROW_PX and _coloured(picture) == 0  # no label maps: all grey


def test_inspect_needs_a_shard_set(tmp_path, capsys):
    assert main(["inspect", f"shards={tmp_path}"]) == 2
    assert "no index.json" in capsys.readouterr().err
