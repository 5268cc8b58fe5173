"""voxfm finetune: scratch and pretrained arms, Dice per class on held-out subjects, resume, few-shot, UNETR."""

import json

import pytest
import torch

from tests.conftest import labelled_shards, phantom_images
from voxfm.data.ingest.run import run_shard
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.export.run import run_export
from voxfm.pretrain.launch.build import build_module
from voxfm.pretrain.launch.run import run_pretrain

FAST = [
    "steps=6",
    "trainer.progress_bar=false",
    "trainer.checkpoint_every_n_steps=3",
    "data.batch_size=1",
    "data.crop_size=[16,16,16]",
    "sw_batch_size=8",
]


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, phantom_dir):
    """The six phantoms with their label maps (0 background, 1 body, 2 organ, 3 lesion), one subject each."""
    return labelled_shards(phantom_images(phantom_dir), tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module")
def resenc_export(tmp_path_factory, mim_run):
    return run_export(str(mim_run), str(tmp_path_factory.mktemp("resenc_export")))


def test_scratch_finetune_scores_held_out_subjects_per_class(labelled, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "experiment=demo_finetune",
                "backbone=none",
                f"data.shards={labelled}",
                f"run_dir={run}",
                "data.val_fraction=0.34",
                *FAST,
            ]
        )
        == 0
    )
    results = json.loads((run / "results.json").read_text())
    assert results["label_values"] == [0, 1, 2, 3] and results["split"] == "by subject: 4 train, 2 validation"
    arm = results["arms"]["scratch"]
    assert arm["steps"] == 6 and len(arm["per_class"]) == 3 and 0 <= arm["mean_dice"] <= 1
    assert "| scratch |" in (run / "results.md").read_text() and "| scratch |" in capsys.readouterr().out


def test_compare_scratch_trains_both_arms_alike_and_a_rerun_resumes(labelled, resenc_export, tmp_path):
    run = tmp_path / "run"
    args = [
        "finetune",
        "experiment=demo_finetune",
        f"backbone={resenc_export}",
        f"data.shards={labelled}",
        f"run_dir={run}",
        "compare_scratch=true",
        "data.n_train=3",
        *FAST,
    ]
    assert main(args) == 0
    first = json.loads((run / "results.json").read_text())
    assert set(first["arms"]) == {"pretrained", "scratch"} and first["n_train"] == 3
    assert first["arms"]["pretrained"]["steps"] == first["arms"]["scratch"]["steps"] == 6
    assert first["arms"]["pretrained"]["mean_dice"] != first["arms"]["scratch"]["mean_dice"]  # different starts
    assert main(args) == 0  # a rerun finds both arms finished: resumes at step 6 and scores the same weights
    again = json.loads((run / "results.json").read_text())
    for arm in ("pretrained", "scratch"):
        assert again["arms"][arm]["resumed_from"] == 6
        assert again["arms"][arm]["per_class"] == first["arms"][arm]["per_class"]


def test_resenc_finetune_starts_from_the_export_with_a_new_head(resenc_export):
    from safetensors.torch import load_file

    from voxfm.pretrain.finetune.model import segmenter_from_export

    net, meta = segmenter_from_export(str(resenc_export), n_classes=5, crop_size=[16] * 3, unetr={})
    exported = load_file(str(resenc_export / "backbone.safetensors"))
    own = net.state_dict()
    heads = [k for k in own if k.startswith("decoder.seg_layers.") and k.endswith("weight")]
    assert heads and all(own[k].shape[0] == 5 for k in heads)
    assert all(torch.equal(own[k], v) for k, v in exported.items() if not k.startswith("decoder.seg_layers."))


def test_unetr_takes_a_vit_export_as_its_encoder_and_freezing_leaves_it_untrained(tmp_path):
    from safetensors.torch import save_file

    from voxfm.models.adapters.vit import ViTAdapter
    from voxfm.models.vit import ViT
    from voxfm.pretrain.finetune.loop import SegmentationModule
    from voxfm.pretrain.finetune.model import encoder_parameters, segmenter_from_export

    vit = ViT(1, 32, 16, hidden_size=48, mlp_dim=96, num_layers=12, num_heads=4, pos_embed_type="learnable")
    weights, meta = ViTAdapter.export_weights(vit.state_dict(), vit, None)
    save_file(weights, str(tmp_path / "backbone.safetensors"))
    (tmp_path / "backbone.json").write_text(json.dumps(meta))
    net, _ = segmenter_from_export(str(tmp_path), n_classes=3, crop_size=[32] * 3, unetr={"feature_size": 8})
    assert all(torch.equal(net.vit.state_dict()[k], v) for k, v in weights.items())
    assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    module = SegmentationModule(net, lr=1e-3, weight_decay=0.0, freeze_encoder=True)
    trained = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert not trained & {id(p) for p in encoder_parameters(net)} and trained


def test_finetune_on_the_real_labelled_scans_writes_the_comparison(real_data, resenc_export, tmp_path):
    """CT head + mask, MRI T1 + 116-region atlas, MRI T1 + 7 tissue classes: one subject each."""
    tasks = {
        "ct": ("ct_head_invesalius", "CT"),
        "aal": ("mri_t1_colin27_ch2", "MR"),
        "kmeans": ("mri_t1_itk_kmeans", "MR"),
    }
    labels = {
        "ct": "ct_head_invesalius_label",
        "aal": "mri_t1_colin27_ch2_aal_label",
        "kmeans": "mri_t1_itk_kmeans_label",
    }
    for task, (name, modality) in tasks.items():
        (tmp_path / f"{task}.csv").write_text(
            f"path,modality,label\n{real_data / (name + '.nii.gz')},{modality},"
            f"{real_data / (labels[task] + '.nii.gz')}\n"
        )
        run_shard(str(tmp_path / f"{task}.csv"), str(tmp_path / task), {}, progress=False)
        run = tmp_path / f"run_{task}"
        assert (
            main(
                [
                    "finetune",
                    "experiment=demo_finetune",
                    f"backbone={resenc_export}",
                    f"data.shards={tmp_path / task}",
                    f"run_dir={run}",
                    "compare_scratch=true",
                    *FAST,
                ]
            )
            == 0
        )
        results = json.loads((run / "results.json").read_text())
        assert results["split"].startswith("one subject") and set(results["arms"]) == {"pretrained", "scratch"}
        assert len(results["label_values"]) > 2 and "| pretrained |" in (run / "results.md").read_text()


def test_the_probe_logs_downstream_dice_without_changing_the_pretraining_run(labelled, shard_dir, tmp_path, capsys):
    def pretrain(run, *extra):
        run_pretrain(
            load_config(
                "pretrain",
                [
                    "experiment=demo_mim",
                    f"data.shards={shard_dir}",
                    f"run_dir={run}",
                    "trainer.max_steps=4",
                    "trainer.progress_bar=false",
                    "trainer.images_every_n_steps=0",
                    "data.num_workers=0",
                    "trainer.log_every_n_steps=1",
                    *extra,
                ],
            )
        )
        return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    probe = (
        f"+callbacks.probe={{shards:'{labelled}',every_n_steps:2,steps:3,crop_size:[16,16,16],n_train:2,batch_size:1}}"
    )
    with_probe = pretrain(tmp_path / "probe", probe.replace("+callbacks", "callbacks"))
    out = capsys.readouterr().out
    assert "voxfm: probe at step 2: mean Dice" in out and out.count("voxfm: probe at step") == 2  # steps 2 and 4
    rows = (tmp_path / "probe" / "metrics" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("probe/mean_dice")
    dice = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert dice and all(0 <= d <= 1 for d in dice)
    without = pretrain(tmp_path / "plain")
    assert all(torch.equal(with_probe[k], without[k]) for k in without)  # the probe works on a copy


def test_either_network_builds_from_random_initialisation(tmp_path):
    from omegaconf import OmegaConf

    from voxfm.pretrain.launch.finetune import _network

    base = load_config("finetune", ["backbone=none", "data.shards=x", f"run_dir={tmp_path}"])
    net, architecture = _network(base, "scratch", 4, [32] * 3)
    assert architecture == "resenc" and net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 4, 32, 32, 32)
    OmegaConf.set_struct(base, False)
    base.model = {
        "_target_": "voxfm.models.vit.ViT",
        "in_channels": 1,
        "img_size": 32,
        "patch_size": 16,
        "hidden_size": 48,
        "mlp_dim": 96,
        "num_layers": 12,
        "num_heads": 4,
        "pos_embed_type": "learnable",
    }
    net, architecture = _network(base, "scratch", 4, [32] * 3)
    assert architecture == "vit" and type(net).__name__ == "UNETR"
    assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 4, 32, 32, 32)


@pytest.fixture(scope="module")
def primus_export(tmp_path_factory, primus_run):
    return run_export(str(primus_run), str(tmp_path_factory.mktemp("primus_export")), export_format="nnssl")


def test_primus_fine_tunes_its_pretrained_encoder_with_a_new_decoder(labelled, primus_export, tmp_path):
    from safetensors.torch import load_file

    from voxfm.pretrain.finetune.model import segmenter_from_export

    net, meta = segmenter_from_export(str(primus_export), n_classes=4, crop_size=[32] * 3, unetr={})
    exported, own = load_file(str(primus_export / "backbone.safetensors")), net.state_dict()
    assert meta["architecture"] == "primus" and net.up_projection.decode[-1].weight.shape[1] == 4
    kept = [k for k in exported if not k.startswith("up_projection.")]
    assert kept and all(torch.equal(own[k], exported[k]) for k in kept)  # tokeniser, encoder, positions
    run = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "experiment=demo_finetune_primus",
                f"backbone={primus_export}",
                f"data.shards={labelled}",
                f"run_dir={run}",
                "compare_scratch=true",
                "data.val_fraction=0.34",
                *FAST,
                "data.crop_size=[32,32,32]",
            ]
        )
        == 0
    )
    results = json.loads((run / "results.json").read_text())
    assert set(results["arms"]) == {"pretrained", "scratch"}
    for arm in results["arms"].values():
        assert arm["architecture"] == "primus" and arm["steps"] == 6 and len(arm["per_class"]) == 3
    with pytest.raises(Exception, match="input shape its position embedding was learnt for"):
        segmenter_from_export(str(primus_export), n_classes=4, crop_size=[16] * 3, unetr={})


def test_the_probe_scores_the_teacher_of_a_self_distillation_run(labelled, shard_dir, tmp_path, capsys):
    from voxfm.pretrain.callbacks.probe import probed_backbone

    unetr = ["model.patch_size=16", "model.num_layers=12"]  # UNETR's ViT
    run_pretrain(
        load_config(
            "pretrain",
            [
                "experiment=demo_dino",
                *unetr,
                f"data.shards={shard_dir}",
                f"run_dir={tmp_path}",
                "trainer.max_steps=2",
                "trainer.progress_bar=false",
                "trainer.images_every_n_steps=0",
                "data.num_workers=0",
                f"callbacks.probe={{shards:'{labelled}',every_n_steps:2,steps:2,crop_size:[32,32,32],n_train:2,batch_size:1}}",
            ],
        )
    )
    assert "voxfm: probe at step 2: mean Dice" in capsys.readouterr().out
    module = build_module(load_config("pretrain", ["experiment=demo_dino", *unetr, "data.shards=/x", "run_dir=/y"]))
    assert probed_backbone(module) is module.objective.teacher_backbone  # what the probe above scored
