"""Small crafted files never allocate gigabytes: a network described by `backbone.json` or by a checkpoint's stored
config is sized on the meta device and compared with the weights beside it before it is built; compressed
checkpoint records, non-finite weights and a lying safetensors header are refused with one line (exit 2)."""

import json
import shutil
import zipfile

import pytest

from voxfm.pretrain.cli.main import main
from voxfm.pretrain.training.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export(mim_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "resenc"
    assert main(["export", f"checkpoint={mim_run}", f"output={out}"]) == 0
    return out


def _finetune(labelled, backbone, run):
    args = ["finetune", "experiment=demo_finetune", f"backbone={backbone}", f"data.shards={labelled}", f"run_dir={run}"]
    return main([*args, "steps=1", "trainer.progress_bar=false", "data.crop_size=[16,16,16]", "data.batch_size=1"])


def _edited(export, tmp_path, edit) -> str:
    copy = tmp_path / "edited"
    shutil.copytree(export, copy)
    meta = json.loads((copy / "backbone.json").read_text())
    edit(meta)
    (copy / "backbone.json").write_text(json.dumps(meta))
    return str(copy)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m["kwargs"].update(features_per_stage=[320000] * 3), "G parameters (voxfm builds at most 4 G)"),
        (lambda m: m["kwargs"].update(features_per_stage=[16, 32, 64]), "does not fit"),
        (lambda m: m["kwargs"].update(features_per_stage=[8, 16]), "cannot be built"),
        (lambda m: m["kwargs"].pop("features_per_stage"), "cannot be built (KeyError: 'features_per_stage')"),
        (lambda m: m["kwargs"].update(kernel_sizes="x"), "cannot be built"),
    ],
)
def test_a_crafted_backbone_json_is_refused_before_anything_is_built(export, labelled, tmp_path, edit, words, capsys):
    assert _finetune(labelled, _edited(export, tmp_path, edit), tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) <= 3


def test_non_finite_weights_or_a_lying_header_are_refused(export, labelled, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "nan"
    shutil.copytree(export, copy)
    weights = load_file(str(copy / "backbone.safetensors"))
    name = sorted(weights)[0]
    weights[name][...] = float("nan")
    save_file(weights, str(copy / "backbone.safetensors"))
    assert _finetune(labelled, copy, tmp_path / "run") == 2
    assert f"weight {name} holds non-finite values" in capsys.readouterr().err
    data = bytearray((export / "backbone.safetensors").read_bytes())
    data[8:16] = b'{"a":{"d'  # the header no longer parses
    (copy / "backbone.safetensors").write_bytes(bytes(data))
    assert _finetune(labelled, copy, tmp_path / "run") == 2
    assert "backbone.safetensors unreadable" in capsys.readouterr().err


def test_a_stored_model_config_asking_for_a_giant_is_refused_before_building(mim_run, tmp_path, capsys):
    import torch

    ckpt = load_checkpoint(mim_run / "checkpoints" / "last.ckpt")
    ckpt["voxfm_config"]["model"]["features_per_stage"] = [320000] * 3
    torch.save(ckpt, tmp_path / "giant.ckpt")
    assert main(["export", f"checkpoint={tmp_path / 'giant.ckpt'}", f"output={tmp_path / 'out'}"]) == 2
    assert "refused before building it" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_checkpoint_with_compressed_records_is_refused_unread(mim_run, tmp_path, capsys):
    bomb = tmp_path / "deflated.ckpt"
    with zipfile.ZipFile(mim_run / "checkpoints" / "last.ckpt") as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    assert main(["export", f"checkpoint={bomb}", f"output={tmp_path / 'out'}"]) == 2
    assert "holds compressed records" in capsys.readouterr().err


def test_a_count_of_blocks_or_a_huge_sidecar_is_refused_before_anything_is_built(
    mim_run, export, labelled, tmp_path, capsys
):
    import torch

    ckpt = load_checkpoint(mim_run / "checkpoints" / "last.ckpt")
    ckpt["voxfm_config"]["model"]["n_blocks_per_stage"] = [200000, 1, 1]  # minutes of module building, even on meta
    torch.save(ckpt, tmp_path / "deep.ckpt")
    assert main(["export", f"checkpoint={tmp_path / 'deep.ckpt'}", f"output={tmp_path / 'out'}"]) == 2
    assert "n_blocks_per_stage=200000: refused before building (at most 1,024)" in capsys.readouterr().err
    sparse = tmp_path / "sparse"
    shutil.copytree(export, sparse)
    with open(sparse / "backbone.json", "r+b") as f:
        f.truncate(2**30)  # a gigabyte that takes no disk
    assert _finetune(labelled, sparse, tmp_path / "run") == 2
    assert "1024 MiB; voxfm reads such a file only up to 64 MiB" in capsys.readouterr().err


def test_a_damaged_checkpoint_given_to_export_is_one_line_exit_4(mim_run, tmp_path, capsys):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes((mim_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    assert main(["export", f"checkpoint={cut}", f"output={tmp_path / 'out'}"]) == 4
    err = capsys.readouterr().err
    assert f"checkpoint={cut} cannot be read" in err and len(err.strip().splitlines()) == 1
