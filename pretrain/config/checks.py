"""Combinations a per-key schema cannot see: model vs crop vs masks vs views, devices, strategy, shard set.

Plain Python on the resolved config (no torch import), so these fail before anything is built. What an objective
needs and what a backbone is come from their declarations (`pretrain/config/declarations.py`); the shape rules
from `models/rules.py` and the region rule from `data/stream/crops.py`, the same functions the model and the view
pipeline use.
"""

from __future__ import annotations

import os

from voxfm.data.stream.crops import view_shift
from voxfm.models.rules import shape_errors, triple
from voxfm.pretrain.config.declarations import Declared, constructor_defaults, read_declared

KIND_NAMES = {"tokens": "a token (ViT-like) backbone", "cnn": "a CNN backbone with encoder stages (model=resenc_*)"}


def _name(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def _token_size(model: Declared, config: dict):
    """The backbone's token edge (the argument its declaration names), or None for a backbone without tokens."""
    name = model.declaration.token_size
    return {**model.defaults(), **config}.get(name) if name else None


def _model_errors(model: Declared, config: dict, crop: list[int]) -> list[str]:
    arguments = {**model.defaults(), **{k: v for k, v in config.items() if not k.startswith("_")}}
    return shape_errors(arguments, crop, "data.crop_size", "model.", model.declaration.rules)


def _loss_errors(node: dict, where: str, crop: list[int]) -> list[str]:
    """The shape rules on an objective's arguments (its decoder's), and on any declared node nested in them."""
    declared = read_declared(node["_target_"])
    arguments = {**(declared.defaults() if declared else {}), **node}
    rules = declared.declaration.rules if declared else ()
    errors = shape_errors(arguments, crop, "data.crop_size", where + ".", rules)
    for key, value in node.items():
        if isinstance(value, dict) and isinstance(value.get("_target_"), str):
            errors += _loss_errors(value, f"{where}.{key}", crop)
    return errors


def _objective_errors(cfg: dict, model: Declared, objective: Declared) -> list[str]:
    views = {**constructor_defaults(cfg["objective"]["views"].get("_target_")), **cfg["objective"]["views"]}
    crop, masking, n_views = triple(views["crop_size"]), views["masking"], views["n_views"]
    overlap = views.get("overlap", 1.0)  # multi-crop views have none: their crops are resampled from the region
    needs, backbone, name = objective.declaration, model.declaration, _name(objective.target)
    errors = []
    if needs.backbone != "any" and needs.backbone != backbone.kind:
        errors.append(f"objective={name} needs {KIND_NAMES[needs.backbone]}, got model._target_={model.target}")
    if needs.views is not None and n_views != needs.views:
        errors.append(f"objective.views.n_views={n_views}: {name} needs {needs.views}")
    if needs.masks and masking is None:
        errors.append("objective.views.masking=null: a masked objective needs a masking")
    loss = {**objective.defaults(), **cfg["objective"]["loss"]}
    if needs.masks_if and (loss.get(needs.masks_if) or 0) > 0 and masking is None:
        errors.append(
            f"objective.views.masking=null: objective.loss.{needs.masks_if}={loss[needs.masks_if]} needs "
            f"masked views; set a masking, or objective.loss.{needs.masks_if}=0"
        )
    if masking is not None and masking.get("patch_size", 0) is None:
        if not errors:  # a backbone of the wrong kind is the reason to give
            errors.append(
                f"objective.views.masking.patch_size=null: one cell per token, but model._target_="
                f"{model.target} has no tokens; give the cell's edge in voxels (a multiple of its stride)"
            )
    elif masking is not None:
        masking = {**constructor_defaults(masking.get("_target_")), **masking}
        cell = triple(masking["patch_size"])
        if any(c % p for c, p in zip(crop, cell)):
            errors.append(f"objective.views.masking.patch_size={masking['patch_size']}: must divide the crop {crop}")
        patch = _token_size(model, cfg["model"])
        if needs.mask_cell_is_token and patch is not None and cell != triple(patch):
            errors.append(
                f"objective.views.masking.patch_size={masking['patch_size']}: must equal "
                f"model.{model.declaration.token_size}={patch} (one mask cell per token)"
            )
    if "local_size" in views:  # multi-crop: the local crops go through the same patch embedding
        patch = _token_size(model, cfg["model"])
        local = triple(views["local_size"])
        if patch is not None and any(s % p for s, p in zip(local, triple(patch))):
            errors.append(
                f"objective.views.local_size={list(local)}: must be divisible by the model's patch "
                f"{list(triple(patch))}"
            )
    if list(crop) != triple(cfg["data"]["crop_size"]):
        errors.append(f"objective.views.crop_size={views['crop_size']}: must equal data.crop_size")
    region = cfg["data"]["region_size"]
    if region is not None:
        shift = view_shift(crop, n_views, overlap)
        need = [c + s for c, s in zip(crop, shift)]
        if any(r < n for r, n in zip(triple(region), need)):
            errors.append(f"data.region_size={region}: too small for {n_views} view(s) of {crop}; at least {need}")
    return errors


def _cpu_bf16_weight_errors(trainer: dict, strategy: dict, model: Declared, loss: dict) -> list[str]:
    """bf16 weights (DeepSpeed's bf16, bf16-true) on a CPU, where PyTorch has no bf16 `avg_pool3d`: refused for what
    pools in the weights' dtype (autocast's bf16-mixed pools in fp32)."""
    precision = str(trainer.get("precision"))
    if not (precision == "bf16-true" or (strategy["name"] == "deepspeed" and precision.startswith("bf16"))):
        return []
    pooling = ["ResEnc's pooled shortcuts"] if model.declaration.kind == "cnn" else []
    gram = loss.get("gram") or {}
    if gram.get("weight", 0) > 0 and gram.get("teacher_scale", 1) > 1:
        pooling.append("the Gram teacher's pooled features (objective.loss.gram.teacher_scale > 1)")
    if not pooling:
        return []
    if strategy["name"] == "deepspeed":
        what, instead = f"trainer.precision={precision} with DeepSpeed", "32-true, or strategy=ddp with bf16-mixed"
    else:
        what, instead = f"trainer.precision={precision}", "bf16-mixed or 32-true"
    return [
        f"{what} on a CPU: the weights are bf16, so {' and '.join(pooling)} would pool in bf16, which PyTorch has "
        f"no CPU kernel for; on a CPU use {instead} (a GPU runs it as it is)"
    ]


def _device_errors(trainer: dict, strategy: dict, model: Declared, gpus: int, loss: dict) -> list[str]:
    errors = []
    accelerator, devices, name = trainer["accelerator"], trainer["devices"], strategy["name"]
    if accelerator in ("gpu", "cuda") and gpus == 0:
        errors.append(f"trainer.accelerator={accelerator}: no GPU is visible to this process")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    available = gpus if on_gpu else (os.cpu_count() or 1)
    if isinstance(devices, int) and devices > available:
        errors.append(f"trainer.devices={devices}: only {available} {'GPU' if on_gpu else 'CPU core'}(s) available")
    if name == "ddp_spawn" and model.declaration.unpicklable:
        errors.append(f"strategy=ddp_spawn: {model.declaration.unpicklable}; use strategy=ddp")
    if name == "deepspeed" and strategy.get("offload_optimizer") and strategy.get("stage", 2) < 2:
        errors.append(f"strategy.offload_optimizer=true: needs ZeRO stage 2 or 3, got stage {strategy['stage']}")
    if name != "deepspeed" and set(strategy) - {"name"}:
        errors.append(f"strategy={name}: {sorted(set(strategy) - {'name'})} apply to DeepSpeed only")
    errors += _gpu_mode_errors(trainer, strategy, on_gpu)
    if not on_gpu:
        errors += _cpu_bf16_weight_errors(trainer, strategy, model, loss)
    if name == "deepspeed" and trainer["precision"] == "16-mixed":
        errors.append(
            "trainer.precision=16-mixed with DeepSpeed: use bf16-mixed (voxfm does not configure fp16 loss scaling)"
        )
    return errors


def _gpu_mode_errors(trainer: dict, strategy: dict, on_gpu: bool) -> list[str]:
    """The opt-in GPU modes, refused before launch where they cannot work."""
    errors, mode, zero3 = [], trainer.get("compile_mode", "default"), strategy.get("stage") == 3
    if mode != "default":
        if not on_gpu:
            what = {"max-autotune": "inductor's GEMM autotuning and CUDA graphs", "reduce-overhead": "CUDA graphs"}
            errors.append(f"trainer.compile_mode={mode}: GPU only ({what.get(mode, 'CUDA')}); on a CPU use default")
        elif not trainer["compile"]:
            errors.append(f"trainer.compile_mode={mode}: needs trainer.compile=true")
        elif strategy["name"] == "deepspeed" and zero3:
            errors.append(f"trainer.compile_mode={mode}: ZeRO-3 compiles block by block around its hooks; use default")
    if trainer.get("fp8"):
        if not on_gpu:
            errors.append("trainer.fp8=true: FP8 linears need an H100-class GPU (compute capability >= 8.9)")
        elif strategy["name"] == "deepspeed" and zero3:
            errors.append("trainer.fp8=true: not with ZeRO-3 (its partitioned weights); use ddp or ZeRO-2")
    return errors


def _retention_errors(trainer: dict) -> list[str]:
    """A milestone is a periodic checkpoint kept forever: one only exists where checkpoints are written."""
    every, keep = trainer["checkpoint_every_n_steps"], trainer.get("keep_every_n_steps")
    if keep and keep % every:
        return [
            f"trainer.keep_every_n_steps={keep}: milestones are kept from the checkpoints written every "
            f"trainer.checkpoint_every_n_steps={every} steps; make it a multiple of {every}"
        ]
    return []


def _shard_errors(data: dict) -> list[str]:
    from voxfm.data.stream.sources import parse_sources

    try:
        parse_sources(data["shards"], data["sources"])
    except ValueError as err:
        return [str(err)]
    return []


def _declared(node: dict, key: str, kind: str) -> tuple[Declared | None, list[str]]:
    declared = read_declared(node["_target_"])
    if declared is None or type(declared.declaration).__name__ != kind:
        return None, [f"{key}._target_={node['_target_']!r}: not a class with a {kind}"]
    return declared, []


def combination_errors(cfg: dict, gpus: int) -> list[str]:
    model, errors = _declared(cfg["model"], "model", "BackboneDeclaration")
    objective, more = _declared(cfg["objective"]["loss"], "objective.loss", "ObjectiveDeclaration")
    errors += more
    if errors:
        return errors
    crop = triple(cfg["data"]["crop_size"])
    teacher = []
    if objective.declaration.teacher and cfg["strategy"]["name"] == "deepspeed" and cfg["strategy"].get("stage") == 3:
        teacher = [
            f"strategy.stage=3: objective={_name(objective.target)} updates an EMA teacher from the whole "
            "student after every step, which ZeRO-3 partitions across ranks; use strategy.stage=2 or ddp"
        ]
    return (
        teacher
        + _model_errors(model, cfg["model"], crop)
        + _loss_errors(cfg["objective"]["loss"], "objective.loss", crop)
        + _objective_errors(cfg, model, objective)
        + _device_errors(cfg["trainer"], cfg["strategy"], model, gpus, cfg["objective"]["loss"])
        + _retention_errors(cfg["trainer"])
        + _shard_errors(cfg["data"])
    )
