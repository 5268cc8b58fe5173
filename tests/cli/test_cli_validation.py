"""Every command's config is checked the same way, before torch; exit codes come from one table (README agrees)."""

import importlib
import json
import os
import re
import subprocess
import sys
import typing
from contextlib import nullcontext

import pytest
from hydra.errors import InstantiationException

from tests.conftest import REPO
from voxfm.pretrain.cli.compose import load_config, resolved
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.config import commands
from voxfm.pretrain.config.packages import INSTALL, from_import_error, missing_package_errors
from voxfm.pretrain.errors import EXIT_CODES, ConfigError, Diverged, FolderLocked, exit_code

BAD = [  # (argv, the key its one error line starts with)
    (["shard", "input=/in", "output=/out", "workers=abc"], "workers='abc': expected int"),
    (["shard", "workers=abc"], "workers='abc': expected int"),
    (["shard", "input=/in", "output=/out", "preprocess.frames=firts"], "preprocess.frames='firts'"),
    (["export", "checkpoint=/c", "output=/o", "format=nnunett"], "format='nnunett'"),
    (["export", "format=nnunett"], "format='nnunett'"),
    (["finetune", "backbone=none", "data.shards=/s", "run_dir=/r", "steps=zero"], "steps='zero': expected int"),
    (["finetune", "steps=zero"], "steps='zero'"),
    (
        [
            "finetune",
            "experiment=demo_finetune",
            "backbone=none",
            "data.shards=/s",
            "run_dir=/r",
            "data.val_fraction=1.5",
        ],
        "data.val_fraction=1.5: expected a value < 1.0",
    ),
    (["inspect", "shards=/s", "n_samples=0"], "n_samples=0: expected a value >= 1"),
    (["bench", "data", "shards=/s", "repeats=many"], "repeats='many'"),
    (["bench", "ingest", "input=/i", "max_volumes=0"], "max_volumes=0"),
    (["bench", "model", "experiment=demo", "steps=0"], "steps=0"),
    (["bench", "loop", "experiment=demo", "shards=/s", "warmup=0"], "warmup=0: expected a value >= 1"),
    (["bench", "attention", "scale=2"], "scale=2: expected a value <= 1.0"),
    (["bench", "attention", "backends=[FLASH]"], "backends=['FLASH']"),
    (["pretrain", "experiment=demo", "data.shards=/nonexistent", "run_dir=/r"], "invalid configuration: data.shards="),
]


def test_every_command_exits_2_with_one_line_naming_the_key_before_torch_is_imported():
    code = (
        "import json, sys; from voxfm.pretrain.cli.main import main; "
        f"rcs = [main(a) for a in {[argv for argv, _ in BAD]!r}]; "
        "print(json.dumps([rcs, 'torch' in sys.modules, 'lightning' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    rcs, torch_loaded, lightning_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert rcs == [2] * len(BAD) and not torch_loaded and not lightning_loaded, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == len(BAD), out.stderr
    for line, (argv, key) in zip(lines, BAD):
        name = " ".join(argv[:2]) if argv[0] == "bench" else argv[0]
        assert line.startswith(f"voxfm {name}: error: {key}"), line


def test_missing_settings_share_the_line_and_a_close_value_or_key_is_suggested(capsys):
    assert main(["shard", "workers=abc"]) == 2
    assert capsys.readouterr().err.strip() == (
        "voxfm shard: error: workers='abc': expected int; missing required setting(s): input=..., output=..."
    )
    assert main(["export", "checkpoint=/c", "output=/o", "format=nnunett"]) == 2
    assert (
        "format='nnunett': expected one of 'monai', 'nnunet', 'nnssl', 'full' (did you mean format=nnunet?)"
        in capsys.readouterr().err
    )
    assert main(["inspect", "shards=/s", "n_sample=3"]) == 2
    assert "n_sample: unknown key; did you mean n_samples?" in capsys.readouterr().err
    assert main(["bench", "attention", "~warmup"]) == 2
    assert capsys.readouterr().err == "voxfm bench attention: error: warmup: missing from the config\n"


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("shard", []),
        ("inspect", []),
        ("export", []),
        ("finetune", []),
        *[("finetune", [f"finetune_experiment={e}"]) for e in ("demo_finetune", "finetune_resenc", "finetune_unetr")],
        ("bench/data", []),
        ("bench/ingest", []),
        ("bench/model", []),
        ("bench/loop", []),
        ("bench/attention", []),
    ],
)
def test_each_schema_declares_exactly_the_keys_of_its_yaml(name, overrides):
    cfg = resolved(load_config(name, overrides))
    with pytest.raises(ConfigError) if commands._missing(cfg) else nullcontext() as err:
        commands.validate_command(name, cfg)
    if err is not None:  # only the settings the YAML leaves to the command line
        assert str(err.value).startswith("missing required setting(s): ") and ";" not in str(err.value)


@pytest.mark.parametrize(
    "literal, module, name",
    [
        (commands.Codec, "voxfm.data.ingest.payload", "CODECS"),
        (commands.Frames, "voxfm.data.ingest.preprocess", "FRAMES"),
        (commands.Layout, "voxfm.data.ingest.layouts", "LAYOUTS"),
        (commands.Channels, "voxfm.data.ingest.layouts", "CHANNELS"),
        (commands.UnknownModality, "voxfm.data.ingest.preprocess", "UNKNOWN_MODALITY"),
        (commands.ExportFormat, "voxfm.pretrain.export.run", "FORMATS"),
        (commands.AttentionBackend, "voxfm.pretrain.bench.attention", "BACKENDS"),
    ],
)
def test_allowed_values_equal_those_of_the_code_that_uses_them(literal, module, name):
    assert set(typing.get_args(literal)) == set(getattr(importlib.import_module(module), name))


def test_the_exit_code_table_maps_classes_and_a_plain_value_error_is_a_crash():
    assert exit_code(ConfigError("x")) == (2, "error") and exit_code(FolderLocked("x"))[0] == 2
    assert exit_code(Diverged("x"))[0] == 3
    assert exit_code(ValueError("operands could not be broadcast")) is None
    assert exit_code(FloatingPointError("x")) is None and exit_code(RuntimeError("x")) is None


def test_a_value_error_from_the_run_propagates_with_its_traceback(monkeypatch, tmp_path):
    import voxfm.pretrain.export.run

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(voxfm.pretrain.export.run, "run_export", broken)
    with pytest.raises(ValueError, match="operands could not be broadcast"):
        main(["export", f"checkpoint={tmp_path}", f"output={tmp_path / 'out'}"])


def test_diverged_exits_3_and_config_error_2_from_a_run(monkeypatch, tmp_path, capsys):
    import voxfm.pretrain.export.run

    for raised, code in ((Diverged("loss is nan"), 3), (ConfigError("checkpoint=x: no checkpoint there"), 2)):

        def run(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(voxfm.pretrain.export.run, "run_export", run)
        assert main(["export", f"checkpoint={tmp_path}", f"output={tmp_path / 'out'}"]) == code
        assert capsys.readouterr().err.count("\n") == 1


def test_the_readme_exit_codes_section_agrees_with_the_table():
    text = (REPO / "README.md").read_text()
    section = text[text.index("#### Exit codes") :].split("\n#", 1)[0]
    rows = dict(re.findall(r"^\| `(\d+)` \| (.*) \|$", section, flags=re.M))
    assert set(rows) == {"0", "1"} | {str(code) for code, _ in EXIT_CODES.values()}
    for cls, (code, _) in EXIT_CODES.items():
        assert f"`{cls.__name__}`" in rows[str(code)], cls


PRETRAIN_WITHOUT_NNUNET = """
import sys
sys.modules["dynamic_network_architectures"] = None  # as after a plain `pip install .`
from voxfm.pretrain.cli.main import main
rc = main({args!r})
print(rc, "torch" in sys.modules)
"""


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_resenc_model_without_nnunets_networks_exits_2_with_the_install_command(shard_dir, tmp_path, command):
    args = (
        ["pretrain", "experiment=demo_mim", f"data.shards={shard_dir}", f"run_dir={tmp_path}"]
        if command == "pretrain"
        else [
            "finetune",
            "experiment=demo_finetune",
            "backbone=none",
            f"data.shards={shard_dir}",
            f"run_dir={tmp_path}",
        ]
    )
    code = PRETRAIN_WITHOUT_NNUNET.format(args=args)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(
        f"voxfm {command}: error: model._target_=voxfm.models.resenc.ResEncUNet: needs nnU-Net's networks"
    ), line
    assert 'pip install "voxfm[nnunet]"' in line and "--no-deps dynamic-network-architectures==0.4.4" in line


def test_the_install_hint_pins_the_version_of_the_nnunet_extra():
    extra = re.search(r"^nnunet = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), flags=re.M).group(1)
    pinned = re.search(r'"(dynamic-network-architectures==[\d.]+)"', extra).group(1)
    assert pinned in INSTALL["dynamic_network_architectures"][1]


def test_an_installed_config_needs_nothing_and_a_wrapped_import_error_is_recognised(monkeypatch):
    cfg = resolved(load_config("pretrain", ["experiment=demo_mim", "data.shards=/s", "run_dir=/r"]))
    assert missing_package_errors(cfg) == []
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures", None)
    try:
        importlib.import_module("dynamic_network_architectures.architectures.unet")
    except ModuleNotFoundError as err:
        try:
            raise InstantiationException("Error locating target 'x'") from ImportError("Error loading 'x'")
        except InstantiationException as wrapped:
            wrapped.__cause__.__cause__ = err
            assert "needs nnU-Net's networks" in str(from_import_error(wrapped))
    assert from_import_error(ModuleNotFoundError("No module named 'foo'", name="foo")) is None


def test_validate_pretrain_runs_once_per_voxfm_pretrain_and_still_for_direct_callers(shard_dir, tmp_path, monkeypatch):
    import voxfm.pretrain.config.schema
    import voxfm.pretrain.launch.run

    calls = []
    real = voxfm.pretrain.config.schema.validate_pretrain

    def counted(cfg):
        calls.append(cfg)
        return real(cfg)

    monkeypatch.setattr(voxfm.pretrain.config.schema, "validate_pretrain", counted)
    monkeypatch.setattr(voxfm.pretrain.launch.run, "validate_pretrain", counted)
    monkeypatch.setattr(voxfm.pretrain.launch.run, "_train", lambda cfg, run_dir: run_dir)
    args = ["experiment=demo", f"data.shards={shard_dir}", f"run_dir={tmp_path / 'run'}"]
    assert main(["pretrain", *args]) == 0 and len(calls) == 1
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        voxfm.pretrain.launch.run.run_pretrain(load_config("pretrain", [*args, "trainer.max_steps=0"]))
    assert len(calls) == 2


def test_a_backbone_package_that_fails_to_import_exits_2_with_the_install_command(shard_dir, tmp_path):
    broken = tmp_path / "site" / "dynamic_network_architectures"  # as a build against another torch fails
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("import torch\nraise ImportError('operator torchvision::nms does not exist')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "voxfm",
            "pretrain",
            "experiment=demo_mim",
            f"data.shards={shard_dir}",
            f"run_dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert "model._target_=voxfm.models.resenc.ResEncUNet: needs nnU-Net's networks" in line
    assert "installed but fails to import (ImportError: operator torchvision::nms does not exist)" in line
    assert "--no-deps dynamic-network-architectures==0.4.4" in line and "Error locating target" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_resenc_config_is_refused_before_torch_loads(shard_dir, tmp_path):
    """Whether nnU-Net's networks import is checked only once the config is valid: that import loads torch."""
    args = [
        "pretrain",
        "model=resenc_tiny",
        "objective=mim",
        f"data.shards={shard_dir}",
        f"run_dir={tmp_path}",
        "trainer.max_steps=ten",
    ]
    code = f"import sys; from voxfm.pretrain.cli.main import main; print(main({args!r}), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
    assert "trainer.max_steps='ten'" in out.stderr
