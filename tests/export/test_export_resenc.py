"""ResEnc exports: nnU-Net's ResidualEncoderUNet (strict), nnU-Net's own loaders in its axis order, channel
inflation, the full module for further pretraining, and load failures that name every bad key."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.exports import model_card_snippet, voxfm_encoder
from voxfm.models.weights import load_strict
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.export.run import run_export
from voxfm.pretrain.launch.run import run_pretrain

pytestmark = pytest.mark.slow


def _run_snippet(folder, monkeypatch):
    monkeypatch.chdir(folder)
    scope: dict = {}
    exec(model_card_snippet(folder), scope)  # noqa: S102 - the README's own lines
    return scope["net"].eval()


@pytest.mark.parametrize("in_channels", [None, 3])
def test_resenc_exports_into_nnunets_class_and_inflates_its_stem(mim_run, tmp_path, monkeypatch, in_channels):
    out = run_export(str(mim_run), str(tmp_path / "export"), in_channels=in_channels)
    meta = json.loads((out / "backbone.json").read_text())
    assert meta["class"] == "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    assert meta["kwargs"]["input_channels"] == (in_channels or 1) and meta["kwargs"]["conv_op"].endswith("Conv3d")
    net = _run_snippet(out, monkeypatch)  # strict load, no voxfm code
    ours = voxfm_encoder(mim_run / "checkpoints" / "last.ckpt")
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        got = net(x.repeat(1, in_channels or 1, 1, 1, 1))
        assert (got - ours(x)).abs().max() < 1e-5  # N identical channels = the 1-channel model


def test_a_tampered_backbone_json_cannot_make_the_snippet_call_anything_else(mim_run, tmp_path, monkeypatch):
    out = run_export(str(mim_run), str(tmp_path / "export"))
    marker = tmp_path / "marker"
    meta = json.loads((out / "backbone.json").read_text())
    tampered = [
        {
            **meta,
            "class": "subprocess.call",
            "kwargs": {"args": f"touch {marker}", "shell": True},
            "kwargs_requires_import": [],
        },
        {**meta, "kwargs": {**meta["kwargs"], "nonlin": "os.system"}},
    ]
    for bad, name in zip(tampered, ("'subprocess.call'", "'os.system'")):
        (out / "backbone.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"backbone.json names {name}; this export loads only"):
            _run_snippet(out, monkeypatch)
    assert not marker.exists()


def test_nnunet_format_loads_through_nnunets_own_functions_in_its_axis_order(mim_run, tmp_path, monkeypatch):
    pytest.importorskip("nnunetv2")
    out = run_export(str(mim_run), str(tmp_path / "nn"), export_format="nnunet")
    fragment = json.loads((out / "nnunet_plans_fragment.json").read_text())
    assert fragment["dataset_json"] == {"overwrite_image_reader_writer": "NibabelIOWithReorient"}
    config = fragment["plans"]["configurations"]["3d_fullres_voxfm"]
    assert config["spacing"] == [1.5, 1.5, 1.5] and config["inherits_from"] == "3d_fullres"
    assert (
        "nnUNetv2_train <ID> 3d_fullres_voxfm <fold> -p nnUNetPlans_voxfm -pretrained_weights"
        in (out / "README.md").read_text()
    )
    _run_snippet(out, monkeypatch)  # nnU-Net's get_network_from_plans + load_pretrained_weights (3 classes)

    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = config["architecture"]
    net = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        input_channels=1,
        output_channels=1,
        deep_supervision=False,
    ).eval()
    net.load_state_dict(torch.load(out / "nnunet_pretrained.pth", weights_only=True)["network_weights"])
    ours = voxfm_encoder(mim_run / "checkpoints" / "last.ckpt")
    x = torch.randn(1, 1, 16, 20, 24)  # [C, X, Y, Z]: nnU-Net sees [C, Z, Y, X]
    with torch.no_grad():
        assert (net(x.permute(0, 1, 4, 3, 2)) - ours(x).permute(0, 1, 4, 3, 2)).abs().max() < 1e-5
    arch["arch_kwargs"]["conv_op"] = "subprocess.call"  # a tampered fragment: the snippet refuses it
    (out / "nnunet_plans_fragment.json").write_text(json.dumps(fragment))
    with pytest.raises(ValueError, match="nnunet_plans_fragment.json names .*'subprocess.call'"):
        _run_snippet(out, monkeypatch)


def test_full_format_keeps_every_weight_of_the_pretraining_module(mim_run, tmp_path, monkeypatch):
    out = run_export(str(mim_run), str(tmp_path / "full"), export_format="full")
    meta = json.loads((out / "full.json").read_text())
    weights = load_file(str(out / "model.safetensors"))
    ckpt = torch.load(mim_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(weights) == set(ckpt["state_dict"]) and meta["step"] == ckpt["global_step"] == 2
    assert meta["config"]["model"]["_target_"] == "voxfm.models.resenc.ResEncUNet"
    monkeypatch.chdir(out)
    exec(model_card_snippet(out), {})  # noqa: S102


def test_a_failed_load_names_missing_unexpected_and_mismatched_keys(mim_run, tmp_path):
    from voxfm.models.resenc import ResEncUNet

    out = run_export(str(mim_run), str(tmp_path / "export"))
    state = load_file(str(out / "backbone.safetensors"))
    state["extra.weight"] = torch.zeros(1)
    del state["encoder.stem.convs.0.conv.bias"]
    wider = ResEncUNet(
        1, 1, features_per_stage=(8, 16, 48), n_blocks_per_stage=(1, 1, 1), n_conv_per_stage_decoder=(1, 1)
    )
    with pytest.raises(ValueError) as err:
        load_strict(wider, state, "backbone.safetensors")
    text = str(err.value)
    assert "missing keys (" in text and "encoder.stem.convs.0.conv.bias" in text
    assert "unexpected keys (1): extra.weight" in text and "shape-mismatch keys" in text and "file (32," in text


def test_a_full_export_continues_pretraining_from_its_step_with_its_weights(mim_run, tmp_path, shard_dir):
    from safetensors.torch import load_file as load

    from voxfm.pretrain.launch.build import build_module
    from voxfm.pretrain.training.init_from import init_module

    out = run_export(str(mim_run), str(tmp_path / "full"), export_format="full")
    cfg = load_config(
        "pretrain",
        [
            "experiment=demo_mim",
            f"data.shards={shard_dir}",
            f"run_dir={tmp_path / 'new'}",
            f"init_from={out}",
            "trainer.max_steps=5",
            "trainer.progress_bar=false",
            "trainer.images_every_n_steps=0",
            "data.num_workers=0",
            "trainer.log_every_n_steps=1",
        ],
    )
    module = build_module(cfg)
    assert init_module(module, str(out), 5) == 2
    exported = load(str(out / "model.safetensors"))
    assert all(torch.equal(v, exported[k]) for k, v in module.state_dict().items())  # the exported weights
    with pytest.raises(ValueError, match="set trainer.max_steps above it"):
        init_module(module, str(out), 2)
    negative = tmp_path / "negative"
    shutil.copytree(out, negative)
    (negative / "full.json").write_text(json.dumps({**json.loads((out / "full.json").read_text()), "step": -500}))
    with pytest.raises(ValueError, match="full.json's step -500 is negative"):  # it would train at negative rates
        init_module(module, str(negative), 5)

    run_pretrain(cfg)
    ckpt = torch.load(tmp_path / "new" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5  # steps 3, 4, 5 after the exported 2
    rows = (tmp_path / "new" / "metrics" / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[rows[0].split(",").index("step")]) for r in rows[1:]]
    assert min(steps) >= 2 and max(steps) >= 4
    lr = [
        float(r.split(",")[rows[0].split(",").index("lr-AdamW/pg1")])
        for r in rows[1:]
        if r.split(",")[rows[0].split(",").index("lr-AdamW/pg1")]
    ]
    assert lr[0] == pytest.approx(3e-3 * 3 / 10)  # the warm-up schedule at step 2, not at step 0
    events = [json.loads(line) for line in (tmp_path / "new" / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and events[0]["step"] == 2 and events[0]["checkpoint"] == out.name


def test_init_from_a_mismatched_model_names_the_bad_keys(mim_run, tmp_path, shard_dir):
    from voxfm.pretrain.launch.build import build_module
    from voxfm.pretrain.training.init_from import init_module

    out = run_export(str(mim_run), str(tmp_path / "full"), export_format="full")
    cfg = load_config("pretrain", ["experiment=demo", f"data.shards={shard_dir}", f"run_dir={tmp_path / 'x'}"])
    with pytest.raises(ValueError, match="does not fit PretrainModule:\n  missing keys"):
        init_module(build_module(cfg), str(out), 10)
