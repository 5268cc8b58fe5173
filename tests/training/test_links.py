"""A link planted in a run_dir, a shard set or beside an export (a folder received as a tarball keeps its links)
never makes voxfm write somewhere else: temp files are created anew beside their target (a link there is removed,
its target untouched), and a file voxfm writes in place (the lock, events.jsonl) that is a link is refused."""

import os

import pytest

from voxfm.pretrain.cli.main import main

pytestmark = pytest.mark.slow


@pytest.fixture
def victim(tmp_path):
    """A file outside the folders voxfm writes, which every planted link points at."""
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def _untouched(victim, mtime):
    return victim.read_text() == "precious\n" and victim.stat().st_mtime_ns == mtime


def _pretrain(shard_dir, run, steps=2):
    args = ["pretrain", "experiment=demo", f"data.shards={shard_dir}", f"run_dir={run}", f"trainer.max_steps={steps}"]
    return main(
        [
            *args,
            "trainer.progress_bar=false",
            "data.num_workers=0",
            "trainer.checkpoint_every_n_steps=1",
            "trainer.log_every_n_steps=1",
        ]
    )


def test_temp_files_planted_as_links_in_a_run_dir_are_replaced_not_followed(shard_dir, tmp_path, victim):
    run, mtime = tmp_path / "run", victim.stat().st_mtime_ns
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml.tmp", "checkpoints/step000001.ckpt.tmp", "checkpoints/last.ckpt.tmp", "metrics.png"):
        (run / name).symlink_to(victim)
    assert _pretrain(shard_dir, run) == 0
    assert _untouched(victim, mtime) and not (run / "metrics.png").is_symlink()
    assert not list(run.rglob("*.tmp"))


@pytest.mark.parametrize("name", [".voxfm.lock", "events.jsonl"])
def test_a_file_written_in_place_that_is_a_link_is_refused(shard_dir, tmp_path, victim, name, capsys):
    run, mtime = tmp_path / "run", victim.stat().st_mtime_ns
    run.mkdir()
    (run / name).symlink_to(victim)
    assert _pretrain(shard_dir, run) == 2
    assert f"{run / name} is a symbolic link" in capsys.readouterr().err
    assert _untouched(victim, mtime) and not (run / "checkpoints").exists()


def test_shard_output_temp_files_planted_as_links_are_not_followed(phantom_dir, tmp_path, victim):
    out, mtime = tmp_path / "shards", victim.stat().st_mtime_ns
    out.mkdir()
    for name in ("index.json.tmp", "report.json.tmp", "shard-000000.tar.tmp"):
        (out / name).symlink_to(victim)
    assert main(["shard", f"input={phantom_dir}", f"output={out}", "workers=1"]) == 0
    assert _untouched(victim, mtime) and (out / "shard-000000.tar").is_file() and not list(out.glob("*.tmp"))
    (out / ".voxfm.lock").unlink()
    (out / ".voxfm.lock").symlink_to(victim)
    assert main(["shard", f"input={phantom_dir}", f"output={out}", "workers=1"]) == 2
    assert _untouched(victim, mtime)


def test_checkpoints_stream_beside_their_target_not_through_memory_or_the_temp_folder(shard_dir, tmp_path, monkeypatch):
    import io
    import tempfile

    import torch

    written, save = [], torch.save

    def recording_save(obj, f, *args, **kwargs):
        written.append(type(f))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", recording_save)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp-folder"))  # a /tmp that cannot take it
    assert _pretrain(shard_dir, tmp_path / "run") == 0
    assert written and io.BytesIO not in written  # no whole-checkpoint copy in host memory


@pytest.mark.parametrize("folder", ["images", "metrics", "checkpoints"])
def test_a_folder_planted_as_a_link_is_refused(shard_dir, tmp_path, folder, capsys):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "step000001.png").write_text("precious\n")
    run.mkdir()
    (run / folder).symlink_to(elsewhere)
    assert _pretrain(shard_dir, run) == 2
    assert f"{run / folder} is a symbolic link" in capsys.readouterr().err
    assert [p.name for p in elsewhere.iterdir()] == ["step000001.png"]


def test_a_lock_with_a_second_name_elsewhere_is_refused(shard_dir, tmp_path, victim, capsys):
    run, mtime = tmp_path / "run", victim.stat().st_mtime_ns
    run.mkdir()
    os.link(victim, run / ".voxfm.lock")  # a hard link: O_NOFOLLOW does not see it
    assert _pretrain(shard_dir, run) == 2
    assert "is not a plain file of its own" in capsys.readouterr().err and _untouched(victim, mtime)
