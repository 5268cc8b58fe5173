"""The LightningModule: fused AdamW with gradient clipping under bf16, parameter groups, non-finite steps."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from voxfm.data.views.counter_random import step_key
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.launch.build import build_module
from voxfm.pretrain.launch.run import run_pretrain
from voxfm.pretrain.training.checkpoints import load_checkpoint
from voxfm.pretrain.training.module import skips_on_device
from voxfm.pretrain.training.precision import view_dtype


def test_fused_adamw_clips_gradients_under_bf16_mixed(tmp_path, shard_dir):
    """Lightning refuses to clip for a fused optimiser under mixed precision; voxfm clips itself (no scaler in bf16).
    The views come in fp16 there, and the reconstruction pictures (outside autocast, fp32 weights) still draw."""
    cfg = load_config(
        "pretrain",
        [
            "experiment=demo",
            f"data.shards={shard_dir}",
            f"run_dir={tmp_path}",
            "trainer.max_steps=2",
            "trainer.precision=bf16-mixed",
            "optim.fused=true",
            "trainer.gradient_clip_val=1.0",
            "trainer.progress_bar=false",
            "trainer.images_every_n_steps=2",
            "data.num_workers=0",
        ],
    )
    run_pretrain(cfg)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    assert (tmp_path / "images" / "step000002.png").stat().st_size > 0
    assert all(group["fused"] for group in ckpt["optimizer_states"][0]["param_groups"])


def _training(precision: str, plugin) -> SimpleNamespace:
    """What `on_after_batch_transfer` reads of a trainer at training step 3, rank 0."""
    return SimpleNamespace(
        training=True,
        precision=precision,
        precision_plugin=plugin,
        global_step=3,
        global_rank=0,
        accumulate_grad_batches=1,
        log_every_n_steps=50,
        should_stop=False,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=3)),
    )


def test_a_half_precision_step_gets_fp16_views_and_a_full_precision_one_fp32():
    """fp16 for every half precision, bf16 steps included (two bytes, 8x finer than bf16: see `view_dtype`), through
    the module's own hook; Lightning's input conversion leaves them as they are under autocast."""
    assert view_dtype("bf16-mixed") == view_dtype("bf16-true") == view_dtype("16-mixed") == torch.float16
    assert view_dtype("32-true") == view_dtype("64-true") == view_dtype("transformer-engine") == torch.float32
    module = build_module(load_config("pretrain", ["experiment=demo", "data.shards=/x", "run_dir=/y"]))
    size = module.view_pipeline.region_size_needed()
    batch = {"region": torch.randint(-1000, 1000, (2, 1, *size), dtype=torch.int16)}
    batch |= {"low": torch.full((2,), -1000.0), "high": torch.full((2,), 1000.0)}
    dtypes = {}
    for precision, plugin in (("bf16-mixed", MixedPrecision("bf16-mixed", "cpu")), ("32-true", Precision())):
        module._trainer = _training(precision, plugin)
        try:
            dtypes[precision] = module.on_after_batch_transfer(dict(batch), 0)["image"]
        finally:
            module._trainer = None
    assert dtypes["bf16-mixed"].dtype == torch.float16 and dtypes["32-true"].dtype == torch.float32
    assert torch.equal(dtypes["bf16-mixed"], dtypes["32-true"].half())  # the same views, rounded once


def test_without_autocast_the_image_keeps_its_fp16_views_and_the_first_conv_casts_it():
    """bf16-true (as DeepSpeed's bf16) converts the batch to its bf16 weights; the image keeps the views' fp16, which
    the objective's targets are computed from, and the backbone's patch conv casts it to bf16 as it reads it. The
    loader's regions pass unconverted: an MR window's bounds stay fp32 (bf16 would round 1234.5 to 1232)."""
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision

    from voxfm.pretrain.training.precision import plugin_for

    assert plugin_for("bf16-mixed", deepspeed=False) is None and plugin_for("32", deepspeed=False) is None
    assert isinstance(plugin_for("bf16", deepspeed=True), DeepSpeedPrecision)
    module = build_module(load_config("pretrain", ["experiment=demo", "data.shards=/x", "run_dir=/y"]))
    plugin = plugin_for("bf16-true", deepspeed=False)
    module = plugin.convert_module(module)
    size = module.view_pipeline.region_size_needed()
    raw = {"region": torch.randint(-1000, 1000, (2, 1, *size), dtype=torch.int16)}
    raw |= {"low": torch.full((2,), 0.0), "high": torch.full((2,), 1234.5)}
    batch = plugin.convert_input(raw)  # as Lightning's loop does before the transfer
    assert batch["high"].dtype == torch.float32 and batch["high"][0] == 1234.5
    module._trainer = _training("bf16-true", plugin)
    seen = []
    conv = module.backbone.patch_embedding.patch_embeddings
    conv.register_forward_hook(lambda _, args, out: seen.append((args[0].dtype, out.dtype)))
    try:
        views = module.on_after_batch_transfer(dict(batch), 0)
        loss, _ = module.loss(views)
    finally:
        module._trainer = None
    assert views["image"].dtype == torch.float16  # Lightning's conversion alone would have made it bf16
    assert views["low"].dtype == torch.bfloat16  # the rest of the views' output is converted
    assert seen == [(torch.bfloat16, torch.bfloat16)] and torch.isfinite(loss)


def test_runs_whose_precision_converts_the_batch_get_the_plugin_that_leaves_the_regions_alone(tmp_path, shard_dir):
    """DeepSpeed and bf16-true take voxfm's precision plugin (`plugin_for`); autocast runs keep Lightning's own. The
    trainer's precision string, which the views' dtype is read from, is the same either way."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from voxfm.pretrain.launch.build import build_trainer
    from voxfm.pretrain.training.precision import ViewsDeepSpeedPrecision, ViewsHalfPrecision

    expected = {
        ("strategy=deepspeed_zero2", "trainer.precision=bf16"): (ViewsDeepSpeedPrecision, "bf16-mixed"),
        ("strategy=auto", "trainer.precision=bf16-true"): (ViewsHalfPrecision, "bf16-true"),
        ("strategy=auto", "trainer.precision=bf16-mixed"): (MixedPrecision, "bf16-mixed"),
    }
    for overrides, (plugin, precision) in expected.items():
        base = ["experiment=demo", f"data.shards={shard_dir}", f"run_dir={tmp_path}", "trainer.accelerator=cpu"]
        trainer = build_trainer(load_config("pretrain", [*base, *overrides]), tmp_path, {}, on_gpu=False)
        assert type(trainer.precision_plugin) is plugin and trainer.precision == precision, overrides


def test_no_weight_decay_on_norms_biases_and_mask_tokens():
    cfg = load_config("pretrain", ["experiment=demo_mim", "data.shards=/x", "run_dir=/y"])
    module = build_module(cfg)
    decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] > 0
    ids = {id(p) for p in no_decay["params"]}
    assert all(id(t) in ids for t in module.objective.mask_tokens)
    assert all(p.ndim >= 2 for p in decay["params"])
    assert not any(p is q for p in decay["params"] for q in no_decay["params"])
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    assert torch.is_tensor(trainable[0])


def test_only_fused_adam_skips_on_the_device():
    p = [torch.nn.Parameter(torch.ones(2))]
    assert skips_on_device(torch.optim.AdamW(p, fused=True)) and skips_on_device(torch.optim.Adam(p, fused=True))
    assert not skips_on_device(torch.optim.AdamW(p, foreach=True))  # its kernels refuse found_inf
    assert not skips_on_device(torch.optim.SGD(p, lr=0.1))


def _counted(module, flags):
    for bad in flags:
        module._count_nonfinite(torch.tensor(float(bad)))


def test_nonfinite_runs_between_two_checks_are_caught_and_skips_survive_a_resume():
    module = build_module(
        load_config("pretrain", ["experiment=demo", "data.shards=/x", "run_dir=/y", "trainer.max_nonfinite_steps=3"])
    )
    module._trainer = SimpleNamespace(checkpoint_callback=None)  # what the check reads of the trainer
    _counted(module, [0, 1, 1, 0])  # steps 0-3: a run of 2
    module._check_nonfinite(3)
    _counted(module, [1, 1, 0, 1])  # steps 4-7: the run ends at 5, and one more at 7
    module._check_nonfinite(7)  # no run of 3 yet, and checked runs are not counted twice
    _counted(module, [1, 1, 1, 0, 0])  # steps 8-12: a run of 3 ending at step 10
    with pytest.raises(FloatingPointError, match=r"at 4 consecutive steps, the last at step 10 .*none yet"):
        module._check_nonfinite(12)  # 4: step 7 and 8-10 are one run
    assert module.skipped_steps == 8
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    resumed = build_module(load_config("pretrain", ["experiment=demo", "data.shards=/x", "run_dir=/y"]))
    resumed.on_load_checkpoint(checkpoint)
    _counted(resumed, [1])
    assert checkpoint["voxfm_skipped_steps"] == 8 and resumed.skipped_steps == 9


def test_each_micro_batch_of_an_accumulated_step_gets_views_of_its_own():
    """The step's keys come from (seed, step, rank, micro-batch): with accumulation the micro-batches of one optimiser
    step are cut differently; without it the keys are (seed, step, rank)'s, as before."""
    module = build_module(load_config("pretrain", ["experiment=demo", "data.shards=/x", "run_dir=/y"]))

    def micro(accumulate: int, ready: int) -> int:
        progress = SimpleNamespace(total=SimpleNamespace(ready=ready))
        module._trainer = SimpleNamespace(
            accumulate_grad_batches=accumulate,
            fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        )
        return module._micro_batch()

    try:
        assert [micro(2, ready) for ready in range(4)] == [0, 1, 0, 1]
        assert micro(1, 5) == 0
    finally:
        module._trainer = None
    size = module.view_pipeline.region_size_needed()
    batch = {"region": torch.zeros(2, 1, *size), "low": torch.zeros(2), "high": torch.ones(2)}
    first, second = (module.view_pipeline(batch, step_key(torch.device("cpu"), 0, 4, 0, m))["mask"] for m in (0, 1))
    assert not torch.equal(first, second)


def test_under_zero3_the_blocks_compile_apart_and_the_views_still_as_one_graph(monkeypatch):
    """ZeRO-3 gathers parameters around each module's forward, which a whole-step graph cannot hold: the backbone
    compiles block by block and the objective runs eagerly, but the views (no parameters) compile as one graph —
    eager, their counter-based random numbers would launch a kernel per operation over every voxel."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # nothing is lowered: which parts, is the test
    overrides = ["experiment=demo", "data.shards=/x", "run_dir=/y", "trainer.compile=true"]
    module = build_module(load_config("pretrain", [*overrides, "strategy=deepspeed_zero3"]))
    assert module.compiled.enabled and not module.compile_objective
    names = []
    monkeypatch.setattr(module.compiled, "wrap", lambda name, fn: names.append(name) or fn)
    regions = {
        "region": torch.zeros(2, 1, 40, 40, 40, dtype=torch.int16),
        "low": torch.full((2,), -1000.0),
        "high": torch.full((2,), 1000.0),
    }
    batch = module.views(regions, step_key(torch.device("cpu"), 0, 0, 0))
    module.loss({**batch, "log_step": False})
    assert names == ["the views (int16 regions)"]
    whole = build_module(load_config("pretrain", overrides))
    assert whole.compiled.enabled and whole.compile_objective  # DDP / one device: the whole step
