"""`voxfm export` lands whole or not at all, one at a time: written beside the output and swapped in, under the
output's lock; a folder holding anything but an export of the same run is refused without overwrite=true."""

import json
import shutil
import stat

import pytest

import voxfm.pretrain.export.run
from voxfm.data.ingest.locks import folder_lock
from voxfm.pretrain.cli.main import main

pytestmark = pytest.mark.slow


def _export(run, out, *extra):
    return main(["export", f"checkpoint={run}", f"output={out}", *extra])


def _files(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.name != ".voxfm.lock"}


def test_a_full_then_a_monai_export_leaves_one_set_with_shared_modes(mim_run, tmp_path):
    out = tmp_path / "export"
    assert _export(mim_run, out, "format=full") == 0 and (out / "full.json").exists()
    assert _export(mim_run, out, "format=monai") == 0
    names = sorted(p.name for p in out.iterdir() if p.name != ".voxfm.lock")
    assert names == ["README.md", "backbone.json", "backbone.safetensors"]  # the full export's files are gone
    assert len({stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}) == 1  # weights as readable as the rest
    assert not list(tmp_path.glob(".export.voxfm-*"))


def test_another_runs_export_or_a_users_files_are_refused_unless_overwrite(mim_run, primus_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert _export(mim_run, out) == 0
    before = _files(out)
    assert _export(primus_run, out, "format=full") == 2
    assert "holds an export of another run (or an unreadable one); nothing was written" in capsys.readouterr().err
    assert _files(out) == before
    assert _export(primus_run, out, "format=full", "overwrite=true") == 0
    assert json.loads((out / "full.json").read_text())["architecture"] == "primus"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    assert _export(mim_run, mine) == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "precious"


def test_an_export_killed_midway_leaves_the_previous_one_and_a_second_export_waits(mim_run, tmp_path, monkeypatch):
    out = tmp_path / "export"
    assert _export(mim_run, out) == 0
    before = _files(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a signal arriving while the weights are written

    monkeypatch.setattr(voxfm.pretrain.export.run, "write_model_card", killed)
    with pytest.raises(KeyboardInterrupt):
        _export(mim_run, out, "format=full")
    assert _files(out) == before and not (tmp_path / ".export.voxfm-new").exists()
    monkeypatch.undo()

    # a kill -9 leaves its half-written folder: the next export removes it
    shutil.copytree(out, tmp_path / ".export.voxfm-new")
    (tmp_path / ".export.voxfm-new" / "backbone.json").write_text("")
    with folder_lock(out, "output"):
        assert _export(mim_run, out, "format=full") == 2  # another export holds the folder
    assert _files(out) == before
    assert _export(mim_run, out, "format=full") == 0 and (out / "full.json").exists()
    assert not (tmp_path / ".export.voxfm-new").exists()


def test_the_same_runs_export_beside_a_users_files_is_refused_too(mim_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert _export(mim_run, out) == 0
    (out / "notes.txt").write_text("mine")
    assert _export(mim_run, out, "format=full") == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
