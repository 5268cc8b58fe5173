"""`voxfm <command> --help`: every key of the command's config with its default and comment, from the YAML; piped
into `head`, the CLI ends quietly."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from voxfm.pretrain.cli.compose import CONF_DIR, load_config
from voxfm.pretrain.cli.main import main

COMMANDS = ["shard", "inspect", "pretrain", "finetune", "export", "plot"]
BENCHES = ["data", "model", "loop", "attention", "ingest"]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_names_every_top_level_key_and_exits_0(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    keys = load_config(command if command != "finetune" else "finetune", []).keys()
    missing = [k for k in keys if f"  {k}:" not in text and f"  {k}=" not in text and f"  {k}." not in text]
    assert not missing, missing
    assert "example: voxfm " + command in text


@pytest.mark.parametrize("bench", BENCHES)
def test_each_bench_help_names_its_own_keys(bench, capsys):
    assert main(["bench", bench, "-h"]) == 0
    text = capsys.readouterr().out
    own = [line.split(":")[0] for line in (CONF_DIR / "bench" / f"{bench}.yaml").read_text().splitlines()]
    own = [k for k in own if k and not k.startswith(("#", " ", "-", "defaults"))]
    assert own and all(f"  {k}:" in text for k in own), own


def test_bench_help_lists_every_bench_and_a_comment_carried_to_its_next_line_is_kept(capsys):
    assert main(["bench", "--help"]) == 0
    text = capsys.readouterr().out
    assert all(f"bench     {b}" in text for b in BENCHES) and "predict=h100|h200" in text and "kernels=true" in text
    assert main(["bench"]) == 2  # no bench named: a usage error, not help
    capsys.readouterr()
    assert main(["bench", "model", "--help"]) == 0
    text = capsys.readouterr().out.splitlines()
    kernels = next(i for i, line in enumerate(text) if line.startswith("  kernels:"))
    assert "eager ops outside its graphs" in text[kernels + 1]  # the YAML comment's second line


def test_only_a_comment_aligned_under_a_keys_comment_continues_it():
    from voxfm.pretrain.cli.help import _keys

    lines = ["loss:", "  a: 1       # first half", "             # second half", "  # a section header", "  b: 2"]
    shown = _keys(lines)
    assert shown[2].split() == ["second", "half"] and len(shown) == 4 and "header" not in " ".join(shown)


def test_predict_and_kernels_together_are_refused_in_one_line(capsys):
    assert main(["bench", "model", "experiment=demo", "predict=h200", "kernels=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one at a time" in err[0]


def test_help_piped_into_a_reader_that_leaves_ends_quietly():
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxfm", "pretrain", "--help"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # as `| head -1` does once it has its line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()


def test_info_names_the_config_folder_each_chosen_file_and_the_launchers(capsys):

    assert main(["pretrain", "--info", "experiment=demo", "model=vit_tiny"]) == 0
    out = capsys.readouterr().out
    assert f"config folder: {CONF_DIR}" in out and "overrides: experiment=demo model=vit_tiny" in out
    chosen = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("  ") and "=" in line]
    assert f"{CONF_DIR}/experiment/demo.yaml" in chosen and all(Path(p).is_file() for p in chosen)
    assert "sweep launchers installed" in out and "basic, submitit_local, submitit_slurm" in out
