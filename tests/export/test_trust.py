"""Files are data, never instructions: a crafted checkpoint or index.json runs nothing and fails with one clear line."""

import functools
import http.server
import json
import shutil
import threading

import pytest
import torch

from voxfm.data.ingest.shard_set import describe_shard_set
from voxfm.data.stream.shards import shard_urls
from voxfm.models.vit import ViT
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.export.run import run_export

VIT = {
    "_target_": "voxfm.models.vit.ViT",
    "in_channels": 1,
    "img_size": [32, 32, 32],
    "patch_size": 8,
    "hidden_size": 48,
    "mlp_dim": 96,
    "num_layers": 1,
    "num_heads": 4,
}


def _checkpoint(folder, model: dict):
    """A last.ckpt made only of dicts and tensors (it passes `weights_only=True`) with the given stored model."""
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "global_step": 1,
        "state_dict": {"backbone.norm.weight": torch.ones(48)},
        "voxfm_config": {
            "model": model,
            "objective": {"loss": {"_target_": "voxfm.pretrain.objectives.mae.MAEObjective"}},
            "data": {"crop_size": [32, 32, 32]},
        },
    }
    torch.save(ckpt, folder / "last.ckpt")
    torch.load(folder / "last.ckpt", weights_only=True)
    return folder / "last.ckpt"


def test_a_checkpoint_that_names_a_command_runs_nothing_and_exits_2(tmp_path, capsys):
    marker = tmp_path / "marker"
    gopen = {"_target_": "webdataset.gopen", "_args_": [f"pipe:touch {marker}", "rb"]}
    ckpt = _checkpoint(tmp_path / "run", {**VIT, "in_channels": gopen})
    assert main(["export", f"checkpoint={ckpt}", f"output={tmp_path / 'out'}"]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert "voxfm_config.model.in_channels: refused a nested _target_='webdataset.gopen'" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "model, key",
    [
        ({**VIT, "_args_": ["x"]}, "voxfm_config.model._args_: refused"),
        ({**VIT, "_partial_": True}, "voxfm_config.model._partial_: refused"),
        ({**VIT, "_recursive_": False}, "voxfm_config.model._recursive_: refused"),
        ({**VIT, "_convert_": "all"}, "voxfm_config.model._convert_: refused"),
        ({**VIT, "_target_": "os.system"}, "voxfm_config.model._target_='os.system': refused"),
        ({**VIT, "img_size": [32, {"_target_": "os.getcwd"}, 32]}, "voxfm_config.model.img_size[1]: refused a nested"),
        ({**VIT, "mlp_dim": {"a": 1}}, "voxfm_config.model.mlp_dim: refused a dict"),
        ({**VIT, "depth": 3}, "voxfm_config.model.depth: not an argument of voxfm.models.vit.ViT"),
    ],
)
def test_every_hydra_key_foreign_target_or_non_plain_argument_is_refused_by_name(tmp_path, model, key):
    ckpt = _checkpoint(tmp_path / "run", model)
    for export_format in ("monai", "full"):
        with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
            run_export(str(ckpt), str(tmp_path / export_format), export_format=export_format)
        assert not (tmp_path / export_format).exists()


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda c: c["voxfm_config"]["objective"]["loss"].update(_target_="os.system"), "objective.loss._target_="),
        (lambda c: c.update(voxfm_data={"spacing": "1.5mm"}), "voxfm_data.spacing='1.5mm' is not what"),
        (lambda c: c.update(voxfm_data={"modalities": {"CT": "x"}}), "voxfm_data.modalities="),
    ],
)
def test_a_foreign_objective_or_a_crafted_data_record_is_refused_before_writing(tmp_path, edit, words, capsys):
    ckpt = _checkpoint(tmp_path / "run", VIT)
    saved = torch.load(ckpt, weights_only=True)
    edit(saved)
    torch.save(saved, ckpt)
    for export_format in ("monai", "full"):
        assert (
            main(["export", f"checkpoint={ckpt}", f"output={tmp_path / export_format}", f"format={export_format}"]) == 2
        )
        assert words in capsys.readouterr().err and not (tmp_path / export_format).exists()


def test_a_plain_stored_config_still_exports(tmp_path):
    backbone = ViT(**{k: v for k, v in VIT.items() if k != "_target_"})
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    ckpt = _checkpoint(tmp_path / "run", VIT)
    saved = torch.load(ckpt, weights_only=True)
    saved["state_dict"] = state
    torch.save(saved, ckpt)
    out = run_export(str(ckpt), str(tmp_path / "out"))
    assert json.loads((out / "backbone.json").read_text())["kwargs"]["hidden_size"] == 48


def _index_folder(shard_dir, folder, names):
    folder.mkdir()
    shutil.copy(shard_dir / "shard-000000.tar", folder / "shard-000000.tar")
    index = json.loads((shard_dir / "index.json").read_text())
    index["shards"] = [{"name": n, "n_samples": 1, "bytes": 1} for n in names]
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def test_an_index_naming_a_pipe_command_runs_nothing_with_data_shards_dot(shard_dir, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "marker"
    folder = _index_folder(shard_dir, tmp_path / "set", [f"pipe:touch {marker}; cat shard-000000.tar"])
    monkeypatch.chdir(folder)
    with pytest.raises(ValueError, match=r"shards\[0\].name='pipe:touch .*': refused; a shard name must be a plain"):
        shard_urls(".")
    assert (
        main(
            [
                "pretrain",
                "experiment=demo",
                "data.shards=.",
                f"run_dir={tmp_path / 'run'}",
                "trainer.max_steps=1",
                "data.num_workers=0",
                "trainer.progress_bar=false",
            ]
        )
        == 2
    )
    assert "a shard name must be a plain file name" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd.tar",
        "../shards/shard-000000.tar",
        "sub/shard-000000.tar",
        ".hidden.tar",
        "http://host/shard.tar",
        "c:\\x.tar",
        "shard-000000",
    ],
)
def test_absolute_relative_and_scheme_names_are_refused(shard_dir, tmp_path, name):
    folder = _index_folder(shard_dir, tmp_path / "set", [name])
    with pytest.raises(ValueError, match="a shard name must be a plain file name"):
        shard_urls(str(folder))


def test_a_plain_index_resolves_to_absolute_paths(shard_dir, monkeypatch):
    monkeypatch.chdir(shard_dir)
    assert shard_urls(".") == [str(shard_dir / "shard-000000.tar")]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda index: {**index, "shards": [{"name": 7}]}, r"shards\[0\].name=7: refused"),
        (lambda index: [index], "expected a JSON object, got list"),
        (lambda index: {**index, "shards": {"name": "shard-000000.tar"}}, '"shards" must be a list of objects'),
        (lambda index: {**index, "config": None}, '"config" must be an object, got null'),
    ],
)
@pytest.mark.parametrize("read", [shard_urls, describe_shard_set])
def test_a_malformed_index_gives_one_line(shard_dir, tmp_path, damage, message, read):
    folder = _index_folder(shard_dir, tmp_path / "set", ["shard-000000.tar"])
    (folder / "index.json").write_text(json.dumps(damage(json.loads((folder / "index.json").read_text()))))
    with pytest.raises(ValueError, match=message) as err:
        read(str(folder))
    assert "\n" not in str(err.value)


def test_a_remote_index_over_the_size_cap_is_refused(shard_dir, monkeypatch):
    monkeypatch.setattr("voxfm.data.stream.shards.MAX_REMOTE_INDEX_BYTES", 100)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shard_dir))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ValueError, match="index.json is over 100 bytes; refused"):
            shard_urls(f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
