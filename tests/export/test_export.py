"""The export loads with strict=True into MONAI (no voxfm code) and reproduces voxfm's encoder."""

import json

import pytest
import torch
from monai.networks.nets import UNETR
from monai.networks.nets import ViT as MonaiViT
from safetensors.torch import load_file

from tests.exports import model_card_snippet, voxfm_encoder
from voxfm.models.adapters.vit import ViTAdapter
from voxfm.models.vit import ViT
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.export.run import run_export
from voxfm.pretrain.launch.run import run_pretrain


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shard_dir):
    run = tmp_path_factory.mktemp("run")
    cfg = load_config(
        "pretrain",
        [
            "experiment=demo",
            f"data.shards={shard_dir}",
            f"run_dir={run}",
            "trainer.max_steps=6",
            "trainer.checkpoint_every_n_steps=3",
            "trainer.progress_bar=false",
            "data.num_workers=0",
        ],
    )
    run_pretrain(cfg)
    return run


def test_export_loads_strictly_into_monai_and_matches_voxfm(run_dir, tmp_path):
    out = run_export(str(run_dir), str(tmp_path / "export"))
    meta = json.loads((out / "backbone.json").read_text())
    weights = load_file(str(out / "backbone.safetensors"))
    assert meta["monai_class"] == "monai.networks.nets.ViT" and meta["step"] == 6
    assert meta["spacing"] == [1.5, 1.5, 1.5] and meta["orientation"] == "RAS"
    assert meta["normalisation"]["CT"] == {
        "scheme": "window",
        "low": -1000.0,
        "high": 1000.0,
        "note": "clip HU to [low, high], map to [0, 1]",
    }
    assert meta["normalisation"]["MR"]["scheme"] == "percentile"
    assert meta["patch_size"] == [8, 8, 8] and meta["config"]["model"]["hidden_size"] == 48

    monai = MonaiViT(**meta["monai_kwargs"]).eval()
    monai.load_state_dict(weights, strict=True)
    ours = voxfm_encoder(run_dir / "checkpoints" / "last.ckpt")
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        diff = (monai(x)[0] - ours(x)).abs().max().item()
    assert diff < 1e-4


def test_exported_weights_load_strictly_into_unetr_vit():
    """UNETR fixes patch 16, 12 layers and learnable position embeddings: such a backbone loads strictly."""
    backbone = ViT(1, 32, 16, hidden_size=48, mlp_dim=96, num_layers=12, num_heads=4, pos_embed_type="learnable")
    weights, _ = ViTAdapter.export_weights(backbone.state_dict(), backbone, None)
    unetr = UNETR(
        in_channels=1,
        out_channels=3,
        img_size=32,
        feature_size=8,
        hidden_size=48,
        mlp_dim=96,
        num_heads=4,
        proj_type="conv",
    ).eval()
    unetr.vit.load_state_dict(weights, strict=True)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert (unetr.vit(x)[0] - backbone.eval()(x)).abs().max() < 1e-4


def test_channel_inflation_gives_the_same_features_on_a_repeated_input(run_dir, tmp_path):
    out = run_export(str(run_dir / "checkpoints" / "step000003.ckpt"), str(tmp_path / "x4"), in_channels=4)
    meta = json.loads((out / "backbone.json").read_text())
    assert meta["monai_kwargs"]["in_channels"] == 4 and meta["step"] == 3
    monai4 = MonaiViT(**meta["monai_kwargs"]).eval()
    monai4.load_state_dict(load_file(str(out / "backbone.safetensors")), strict=True)
    ours = voxfm_encoder(run_dir / "checkpoints" / "step000003.ckpt")
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert (monai4(x.repeat(1, 4, 1, 1, 1))[0] - ours(x)).abs().max() < 1e-4


def test_export_of_a_missing_checkpoint_says_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="expected a .ckpt file or folder, or a run_dir"):
        run_export(str(tmp_path), str(tmp_path / "out"))


def test_a_mae_contrastive_run_exports_into_monai(tmp_path, shard_dir):
    run = tmp_path / "run"
    run_pretrain(
        load_config(
            "pretrain",
            [
                "experiment=demo_mae_contrastive",
                f"data.shards={shard_dir}",
                f"run_dir={run}",
                "trainer.max_steps=2",
                "trainer.progress_bar=false",
                "trainer.images_every_n_steps=0",
                "data.num_workers=0",
            ],
        )
    )
    out = run_export(str(run), str(tmp_path / "export"))
    meta = json.loads((out / "backbone.json").read_text())
    monai = MonaiViT(**meta["monai_kwargs"]).eval()
    monai.load_state_dict(load_file(str(out / "backbone.safetensors")), strict=True)
    ours = voxfm_encoder(run / "checkpoints" / "last.ckpt")
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert (monai(x)[0] - ours(x)).abs().max() < 1e-4


def test_the_model_cards_loading_snippet_runs_verbatim(run_dir, tmp_path, monkeypatch):
    out = run_export(str(run_dir), str(tmp_path / "export"))
    card = (out / "README.md").read_text()
    for words in (
        "spacing: [1.5, 1.5, 1.5] mm",
        "orientation: RAS",
        "axis order of the tensor: [C, X, Y, Z]",
        'CT: {"scheme": "window"',
        "modalities (volumes): {",
        "Intended use",
    ):
        assert words in card, words
    snippet = model_card_snippet(out)
    assert "pydoc" not in snippet and '"monai.networks.nets.ViT": monai.networks.nets.ViT,' in snippet
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the README's own lines, as a user would paste them
    ours = voxfm_encoder(run_dir / "checkpoints" / "last.ckpt")
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert (scope["net"].eval()(x)[0] - ours(x)).abs().max() < 1e-4


def test_the_weights_a_stored_config_exports_are_the_teachers_under_self_distillation():
    from voxfm.pretrain.export.run import backbone_state

    backbone = torch.nn.Linear(2, 2)
    state = {
        "backbone.weight": torch.zeros(2, 2),
        "backbone.bias": torch.zeros(2),
        "objective.teacher_backbone.weight": torch.ones(2, 2),
        "objective.teacher_backbone.bias": torch.ones(2),
    }
    dino = {"objective": {"loss": {"_target_": "voxfm.pretrain.objectives.dino.objective.DINOObjective"}}}
    mae = {"objective": {"loss": {"_target_": "voxfm.pretrain.objectives.mae.MAEObjective"}}}
    assert all(v.eq(1).all() for v in backbone_state(state, dino, backbone).values())  # format=full reads it too
    assert all(v.eq(0).all() for v in backbone_state(state, mae, backbone).values())
    masters = {"objective.teacher_fp32.t0": torch.full((2, 2), 2.0), "objective.teacher_fp32.t1": torch.full((2,), 2.0)}
    assert all(v.eq(2).all() for v in backbone_state({**state, **masters}, dino, backbone).values())  # bf16 runs


def test_the_card_has_hub_front_matter_and_its_monai_preprocessing_runs_verbatim(run_dir, tmp_path):
    import nibabel as nib
    import numpy as np

    out = run_export(str(run_dir), str(tmp_path / "export"))
    card = (out / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "license: other" in front and "library_name: voxfm" in front and "- medical-imaging" in front
    meta = json.loads((out / "backbone.json").read_text())
    assert meta["voxfm_version"] and "git_revision" in meta
    chain = card.split("## Preprocessing with MONAI\n```python\n", 1)[1].split("\n```", 1)[0]
    scope: dict = {}
    exec(chain, scope)  # noqa: S102 - the card's own lines
    ct = np.full((40, 36, 20), -1000, np.int16)
    ct[8:32, 8:28, 4:16] = 40
    nib.save(nib.Nifti1Image(ct, np.diag([-0.8, -0.8, 2.5, 1.0])), tmp_path / "ct.nii.gz")  # LPS-ish storage
    image = scope["preprocessing"]("CT")({"image": str(tmp_path / "ct.nii.gz")})["image"]
    assert [round(float(s), 3) for s in image.pixdim] == meta["spacing"]
    assert image.min() >= 0 and image.max() <= 1 and abs(float(image.max()) - 0.52) < 0.01  # 40 HU in [-1000, 1000]
    assert "".join(nib.aff2axcodes(image.affine.numpy())) == "RAS"


@pytest.mark.slow
def test_the_full_cards_continue_command_runs_as_printed(run_dir, tmp_path, shard_dir):
    import shlex

    from voxfm.pretrain.cli.main import main

    out = run_export(str(run_dir), str(tmp_path / "full"), export_format="full")
    assert json.loads((out / "full.json").read_text())["experiment"] == "demo"
    card = (out / "README.md").read_text()
    command = card.split("## Continue pretraining\n", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert command.startswith("voxfm pretrain experiment=demo init_from=<this folder>")
    filled = command.replace("<this folder>", str(out)).replace("<your shard set>", str(shard_dir))
    filled = filled.replace("<a new run_dir>", str(tmp_path / "continued"))
    assert main(shlex.split(filled)[1:]) == 0  # the card's line, its three placeholders filled in
    events = (tmp_path / "continued" / "events.jsonl").read_text()
    assert '"event": "start", "step": 6' in events and '"event": "end", "step": 300' in events
