"""format=nnssl: the file nnssl writes, read as nnU-Net reads it. nnU-Net's network is built from the adaptation plan
(a preset by name, else class + kwargs), loads `network_weights` strictly and computes voxfm's function on nnU-Net's
axis order: for Primus, whose RoPE and position embeddings depend on it, on a non-cubic grid with and without
register tokens, and with sharp attention (a missing RoPE block swap is caught).

nnU-Net's pretrained fine-tuning (`like_nnssl.py`, `pretrainedTrainer.py`, `get_network_via_name.py`) is on its main
branch, not in the installed 2.8.1: `nnunet_network` repeats its dispatch, and builds everything that is not a preset
through 2.8.1's own `get_network_from_plans`."""

import pytest

from tests.exports import model_card_snippet, voxfm_encoder
from tests.nnssl import (
    DYNAMIC_ARCHITECTURE_PLANS,
    load_as_nnunet,
    nnunet_network,
    read_as_nnunet,
    same_function,
)
from voxfm.models.primus import Primus
from voxfm.pretrain.export.run import run_export


@pytest.mark.slow
def test_nnssl_file_of_demo_primus_builds_nnunets_primus_and_gives_voxfms_output(primus_run, tmp_path, monkeypatch):
    out = run_export(str(primus_run), str(tmp_path / "nnssl"), export_format="nnssl")
    checkpoint = read_as_nnunet(out)
    plan = checkpoint["nnssl_adaptation_plan"]
    arch = plan["architecture_plans"]
    assert arch["arch_class_name"] == Primus.declaration.export_class  # not a preset
    assert arch["arch_kwargs_requiring_import"] == []
    assert (plan["key_to_encoder"], plan["key_to_stem"], plan["keys_to_in_proj"], plan["key_to_lpe"]) == (
        "eva",
        "down_projection",
        ["down_projection.proj"],
        "eva.pos_embed",
    )
    assert checkpoint["trainer_name"] == "voxfm.MAEObjective" and plan["pretrain_num_input_channels"] == 1
    net = load_as_nnunet(nnunet_network(plan, 1, 1), checkpoint)  # primus_tiny: 1 input channel, 1 output
    assert same_function(voxfm_encoder(primus_run / "checkpoints" / "last.ckpt"), net, (32, 32, 32)) < 1e-4
    card = (out / "README.md").read_text()
    assert "-tr PretrainedTrainer_Primus" in card and "refuses without a trainer of your own" in card
    monkeypatch.chdir(out)
    exec(model_card_snippet(out), {})  # noqa: S102 - the README's own lines


@pytest.mark.slow
def test_nnssl_file_of_demo_mim_builds_nnunets_resenc_from_its_kwargs_and_gives_voxfms_output(
    mim_run, tmp_path, monkeypatch
):
    out = run_export(str(mim_run), str(tmp_path / "nnssl"), export_format="nnssl")
    checkpoint = read_as_nnunet(out)
    plan = checkpoint["nnssl_adaptation_plan"]
    arch = plan["architecture_plans"]
    assert arch["arch_class_name"] == "ResidualEncoderUNet" and list(arch["arch_kwargs"]) == DYNAMIC_ARCHITECTURE_PLANS
    assert arch["arch_kwargs_requiring_import"] == ["conv_op", "norm_op", "nonlin"]
    assert (plan["key_to_encoder"], plan["key_to_stem"], plan["key_to_lpe"]) == ("encoder.stages", "encoder.stem", None)
    assert plan["recommended_downstream_patchsize"] == [32, 32, 32]  # demo_mim's crop
    net = load_as_nnunet(nnunet_network(plan, 1, 1), checkpoint)
    assert same_function(voxfm_encoder(mim_run / "checkpoints" / "last.ckpt"), net, (16, 20, 24)) < 1e-5
    assert "nnUNetv2_train_pretrained <ID> 3d_fullres <fold> -p" in (out / "README.md").read_text()
    monkeypatch.chdir(out)
    exec(model_card_snippet(out), {})  # noqa: S102


@pytest.mark.slow
def test_an_nnssl_export_of_a_primus_that_is_no_preset_says_so_at_export(primus_run, tmp_path, capsys):
    from voxfm.pretrain.cli.main import main

    assert main(["export", f"checkpoint={primus_run}", f"output={tmp_path / 'n'}", "format=nnssl"]) == 0
    err = capsys.readouterr().err
    assert "nnUNetv2_train_pretrained builds only its named presets" in err and "model=primus_m" in err
    assert "`model=primus_m` is PrimusM" in (tmp_path / "n" / "README.md").read_text()
