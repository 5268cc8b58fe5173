"""objective=dino: an EMA teacher that takes no gradient, moves by exactly m·t + (1−m)·s, is saved and restored
with the run and exported (loading strictly through the model card's snippet); the student — backbone, both heads,
mask token — gets every gradient from 2 global + 2 local crops with iBOT masks; ZeRO-3 is refused before launch."""

import os

import torch

from tests.exports import model_card_snippet
from voxfm.data.views.counter_random import step_key
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.launch.build import build_module
from voxfm.pretrain.training.checkpoints import load_checkpoint


def _module(seed: int = 0):
    torch.manual_seed(seed)
    return build_module(load_config("pretrain", ["experiment=demo_dino", "data.shards=/x", "run_dir=/y"]))


def _batch(module):
    size = module.view_pipeline.region_size_needed()
    g = torch.Generator().manual_seed(0)
    regions = {
        "region": torch.randint(-1000, 1000, (4, 1, *size), generator=g, dtype=torch.int16),
        "low": torch.full((4,), -1000.0),
        "high": torch.full((4,), 1000.0),
    }
    return module.view_pipeline(regions, step_key(torch.device("cpu"), 0, 0, 0))


def test_the_student_gets_every_gradient_the_teacher_none_and_the_loss_is_deterministic():
    module = _module()
    batch = _batch(module)
    assert batch["image"].shape[0] == 8 and batch["local"].shape == (8, 1, 16, 16, 16)  # 2 global, 2 local crops
    assert batch["masks"].any(dim=1).sum() == 4  # iBOT masks half the global crops
    loss, logs = module.objective(batch, module.backbone)
    assert {
        "dino_loss",
        "ibot_loss",
        "koleo",
        "teacher_entropy",
        "effective_rank",
        "gram_mean",
        "teacher_momentum",
        "teacher_temperature",
    } <= set(logs)
    loss.backward()
    objective = module.objective
    student = [
        *module.backbone.named_parameters(),
        *objective.head.named_parameters(),
        *objective.ibot_head.named_parameters(),
        ("mask_token", objective.mask_token),
    ]
    assert module.backbone.cls_token is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for name, p in student if p.requires_grad)
    teacher = [
        *objective.teacher_backbone.parameters(),
        *objective.teacher_head.parameters(),
        *objective.teacher_ibot_head.parameters(),
    ]
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    again = _module()
    assert torch.equal(again.objective(_batch(again), again.backbone)[0], loss)


def test_the_teacher_moves_by_exactly_the_scheduled_momentum():
    module = _module()
    objective, backbone = module.objective, module.backbone
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p))  # a student that has moved away from its teacher
    teacher = [p.clone() for p in objective.teacher_backbone.parameters()]
    student = [p.clone() for p in backbone.parameters()]
    objective._steps = 75  # a quarter of the 300 steps: m = 1 − 0.008 · (cos(π/4) + 1) / 2
    m = objective.update_teacher(backbone, 300)
    assert abs(m - (1 - 0.008 * (2**-0.5 + 1) / 2)) < 1e-12
    for t0, s, t1 in zip(teacher, student, objective.teacher_backbone.parameters()):
        assert torch.equal(t1, t0 * m + s * (1 - m))


def test_the_teacher_is_saved_and_a_resumed_run_continues_its_schedule(shard_dir, tmp_path):
    common = [
        "experiment=demo_dino",
        f"data.shards={shard_dir}",
        f"run_dir={tmp_path}",
        "data.num_workers=0",
        "trainer.progress_bar=false",
        "trainer.images_every_n_steps=0",
        "trainer.checkpoint_every_n_steps=3",
    ]
    assert main(["pretrain", *common, "trainer.max_steps=3"]) == 0
    first = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert int(first["objective.teacher_steps"]) == 3
    teacher_keys = [k for k in first if k.startswith("objective.teacher_backbone.")]
    assert teacher_keys and any(
        not torch.equal(first[k], first["backbone." + k.split(".", 2)[2]]) for k in teacher_keys
    )  # the teacher lags the student
    assert main(["pretrain", *common, "trainer.max_steps=5"]) == 0
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert int(last["objective.teacher_steps"]) == 5  # resumed at 3, not restarted


def test_zero3_is_refused_before_launch(shard_dir, tmp_path, capsys):
    assert (
        main(
            [
                "pretrain",
                "experiment=demo_dino",
                f"data.shards={shard_dir}",
                f"run_dir={tmp_path}",
                "strategy=deepspeed_zero3",
            ]
        )
        == 2
    )
    assert "updates an EMA teacher from the whole student" in capsys.readouterr().err


def test_the_export_is_the_teacher_backbone(shard_dir, tmp_path):
    from safetensors.torch import load_file

    assert (
        main(
            [
                "pretrain",
                "experiment=demo_dino",
                f"data.shards={shard_dir}",
                f"run_dir={tmp_path / 'run'}",
                "data.num_workers=0",
                "trainer.progress_bar=false",
                "trainer.images_every_n_steps=0",
                "trainer.max_steps=2",
            ]
        )
        == 0
    )
    assert main(["export", f"checkpoint={tmp_path / 'run'}", f"output={tmp_path / 'out'}"]) == 0
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    exported = load_file(str(tmp_path / "out" / "backbone.safetensors"))
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(exported[key], state["objective.teacher_backbone." + key])
    assert not torch.equal(exported[key], state["backbone." + key])
    assert "cls_token" not in exported and "objective.teacher_backbone.cls_token" in state
    assert "leaves it out and loads strictly" in (tmp_path / "out" / "README.md").read_text()
    scope = {}
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path / "out")
        exec(model_card_snippet(tmp_path / "out"), scope)  # strict=True inside
    finally:
        os.chdir(cwd)
    assert torch.equal(scope["net"].state_dict()[key], exported[key])


def test_primus_distils_through_its_register_token_and_rope_on_local_crops():
    torch.manual_seed(0)
    module = build_module(
        load_config(
            "pretrain",
            [
                "experiment=demo_dino",
                "model=primus_tiny",
                "~model.class_token",
                "model.num_register_tokens=1",
                "objective.views.masking.patch_size=${model.patch_embed_size}",
                "data.shards=/x",
                "run_dir=/y",
            ],
        )
    )
    batch = _batch(module)
    loss, logs = module.objective(batch, module.backbone)
    loss.backward()
    backbone = module.backbone
    assert backbone.register_tokens.grad.abs().sum() > 0  # the class token of self-distillation
    assert ((16, 16, 16), "cpu") not in backbone._rope_tables and ((2, 2, 2), "cpu") in backbone._rope_tables
    trained = [p for p in backbone.encoder_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)
    assert all(p.grad is None for p in backbone.up_projection.parameters())  # the decoder is frozen
    assert torch.isfinite(loss) and "ibot_loss" in logs


def test_the_dino_loss_alone_has_no_ibot_parameters_and_ibot_without_masks_is_refused():
    import pytest

    alone = build_module(
        load_config(
            "pretrain",
            [
                "experiment=demo_dino",
                "objective.loss.ibot_weight=0",
                "objective.views.masking=null",
                "data.shards=/x",
                "run_dir=/y",
            ],
        )
    )
    assert alone.objective.ibot_head is None and alone.objective.mask_token is None  # nothing unused under DDP
    loss, logs = alone.objective(_batch(alone), alone.backbone)
    loss.backward()
    assert "ibot_loss" not in logs and all(
        p.grad is not None for p in alone.objective.head.parameters() if p.requires_grad
    )
    unmasked = build_module(
        load_config(
            "pretrain", ["experiment=demo_dino", "objective.views.masking=null", "data.shards=/x", "run_dir=/y"]
        )
    )
    with pytest.raises(ValueError, match="ibot_weight=0 for the DINO loss alone"):
        unmasked.objective(_batch(unmasked), unmasked.backbone)


def test_a_half_precision_run_keeps_an_fp32_teacher_that_moves_exports_and_resumes():
    """DeepSpeed bf16 casts every parameter to bf16: the EMA runs on fp32 copies (buffers, which it leaves alone)."""
    from voxfm.pretrain.export.run import fp32_teacher

    half = build_module(
        load_config(
            "pretrain",
            [
                "experiment=demo_dino",
                "strategy=deepspeed_zero2",
                "trainer.precision=bf16-mixed",
                "data.shards=/x",
                "run_dir=/y",
            ],
        )
    )
    objective, backbone = half.objective, half.backbone
    assert objective.teacher_fp32 is not None and _module().objective.teacher_fp32 is None  # DDP: none
    with torch.no_grad():
        for p in half.parameters():  # what DeepSpeed's bf16 does to the module it wraps
            p.data = p.data.to(torch.bfloat16)
        for p in backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    masters = [t.clone() for t in objective.teacher_fp32.tensors()]
    student = [p.float() for p in objective.pairs(backbone)[1]]
    m = objective.update_teacher(backbone, 300)
    for t0, s, t1, teacher in zip(masters, student, objective.teacher_fp32.tensors(), objective.pairs(backbone)[0]):
        assert t1.dtype == torch.float32 and torch.equal(t1, t0 * m + s * (1 - m))
        assert torch.equal(teacher, t1.to(torch.bfloat16))
    moved = sum(int((a != b).sum()) for a, b in zip(masters, objective.teacher_fp32.tensors()))
    assert moved > 0.9 * sum(t.numel() for t in masters)  # in bf16 most of these steps would round away
    state = {f"objective.{k}": v for k, v in objective.state_dict().items()}
    exported, key = fp32_teacher(state, backbone), "blocks.0.attn.qkv.weight"
    index = [n for n, _ in backbone.named_parameters()].index(key)
    assert torch.equal(exported[key], objective.teacher_fp32.tensors()[index])  # the export reads the fp32 copy
    fp32 = _module()  # the same run resumed without half precision takes the exact teacher
    fp32.objective.load_state_dict(objective.state_dict())
    assert torch.equal(fp32.objective.teacher_backbone.state_dict()[key], exported[key])


def test_local_crops_the_patch_does_not_divide_and_ibot_without_masks_are_refused_before_launch(
    shard_dir, tmp_path, capsys
):
    common = ["pretrain", "experiment=demo_dino", f"data.shards={shard_dir}", f"run_dir={tmp_path}"]
    assert main([*common, "objective.views.local_size=[12,12,12]"]) == 2
    assert (
        "objective.views.local_size=[12, 12, 12]: must be divisible by the model's patch [8, 8, 8]"
        in capsys.readouterr().err
    )
    assert main([*common, "objective.views.masking=null"]) == 2
    assert "objective.loss.ibot_weight=1.0 needs masked views" in capsys.readouterr().err
