"""Combinations a per-key schema cannot see: model vs crop vs masks vs views, devices, strategy, shard set.

Plain Python on the resolved config (no torch import), so these fail before anything is built.
"""

from __future__ import annotations

import math
import os

from data.crops import view_shift

VIT, RESENC = "models.vit.ViT", "models.resenc.ResEncUNet"
MAE_CONTRASTIVE = "pretrain.objectives.mae_contrastive.MAEContrastiveObjective"
MAE_LIKE = ("pretrain.objectives.mae.MAEObjective", MAE_CONTRASTIVE)
TWO_VIEWS = ("pretrain.objectives.simclr.SimCLRObjective", MAE_CONTRASTIVE)


def _triple(v) -> list[int]:
    return [v] * 3 if isinstance(v, int) else list(v)


def _model_errors(model: dict, crop: list[int]) -> list[str]:
    errors = []
    if model["_target_"] == VIT:
        patch = _triple(model.get("patch_size", 16))
        if any(c % p for c, p in zip(crop, patch)):
            errors.append(f"data.crop_size={crop}: must be divisible by model.patch_size={model['patch_size']}")
        if model["hidden_size"] % model["num_heads"]:
            errors.append(f"model.hidden_size={model['hidden_size']}: must be divisible by "
                          f"model.num_heads={model['num_heads']}")
        if model.get("pos_embed_type", "sincos") == "sincos" and model["hidden_size"] % 6:
            errors.append(f"model.hidden_size={model['hidden_size']}: must be divisible by 6 for "
                          "model.pos_embed_type=sincos (or use learnable)")
    elif model["_target_"] == RESENC:
        stride = math.prod(model.get("strides") or [1] + [2] * (len(model["features_per_stage"]) - 1))
        if any(c % stride for c in crop):
            errors.append(f"data.crop_size={crop}: must be divisible by the ResEnc UNet's total stride {stride}")
        n = len(model["features_per_stage"])
        if len(model["n_blocks_per_stage"]) != n or len(model["n_conv_per_stage_decoder"]) != n - 1:
            errors.append(f"model: {n} stages need {n} n_blocks_per_stage and {n - 1} n_conv_per_stage_decoder")
    return errors


def _objective_errors(cfg: dict) -> list[str]:
    model, loss, stage = cfg["model"], cfg["objective"]["loss"], cfg["objective"]["stage"]
    crop, target, masking = _triple(stage["crop_size"]), loss["_target_"], stage.get("masking")
    n_views, overlap = stage.get("n_views", 1), stage.get("overlap", 0.5)
    errors = []
    if target in MAE_LIKE and model["_target_"] != VIT:
        errors.append(f"objective={target.split('.')[-1]} needs a ViT backbone, got model._target_={model['_target_']}")
    if target.endswith("MIMObjective") and model["_target_"] != RESENC:
        errors.append(f"objective=mim needs a ResEnc UNet backbone, got model._target_={model['_target_']}")
    if target in TWO_VIEWS and n_views != 2:
        errors.append(f"objective.stage.n_views={n_views}: {target.split('.')[-1]} needs 2")
    if (target in MAE_LIKE or target.endswith("MIMObjective")) and masking is None:
        errors.append("objective.stage.masking=null: a masked objective needs a masking")
    if masking is not None:
        cell = _triple(masking.get("patch_size", 16))
        if any(c % p for c, p in zip(crop, cell)):
            errors.append(f"objective.stage.masking.patch_size={masking['patch_size']}: must divide the crop {crop}")
        if target in MAE_LIKE and model["_target_"] == VIT and cell != _triple(model.get("patch_size", 16)):
            errors.append(f"objective.stage.masking.patch_size={masking['patch_size']}: must equal "
                          f"model.patch_size={model['patch_size']} (one mask cell per token)")
    if list(crop) != _triple(cfg["data"]["crop_size"]):
        errors.append(f"objective.stage.crop_size={stage['crop_size']}: must equal data.crop_size")
    region = cfg["data"]["region_size"]
    if region is not None:
        shift = view_shift(crop, n_views, overlap)
        need = [c + s for c, s in zip(crop, shift)]
        if any(r < n for r, n in zip(_triple(region), need)):
            errors.append(f"data.region_size={region}: too small for {n_views} view(s) of {crop}; "
                          f"at least {need}")
    return errors


def _device_errors(trainer: dict, strategy: dict, model: dict, gpus: int) -> list[str]:
    errors = []
    accelerator, devices, name = trainer["accelerator"], trainer["devices"], strategy["name"]
    if accelerator in ("gpu", "cuda") and gpus == 0:
        errors.append(f"trainer.accelerator={accelerator}: no GPU is visible to this process")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    available = gpus if on_gpu else (os.cpu_count() or 1)
    if isinstance(devices, int) and devices > available:
        errors.append(f"trainer.devices={devices}: only {available} {'GPU' if on_gpu else 'CPU core'}(s) available")
    if name == "ddp_spawn" and model["_target_"] == RESENC:
        errors.append("strategy=ddp_spawn: nnU-Net's ResEnc blocks cannot be pickled; use strategy=ddp")
    if name == "deepspeed" and strategy.get("offload_optimizer") and strategy.get("stage", 2) < 2:
        errors.append(f"strategy.offload_optimizer=true: needs ZeRO stage 2 or 3, got stage {strategy['stage']}")
    if name != "deepspeed" and set(strategy) - {"name"}:
        errors.append(f"strategy={name}: {sorted(set(strategy) - {'name'})} apply to DeepSpeed only")
    if name == "deepspeed" and trainer["precision"] == "16-mixed":
        errors.append("trainer.precision=16-mixed with DeepSpeed: use bf16-mixed (voxfm does not configure fp16 "
                      "loss scaling)")
    return errors


def _shard_errors(data: dict) -> list[str]:
    from data.sources import parse_sources

    try:
        parse_sources(data["shards"], data["sources"])
    except ValueError as err:
        return [str(err)]
    return []


def combination_errors(cfg: dict, gpus: int) -> list[str]:
    return (_model_errors(cfg["model"], _triple(cfg["data"]["crop_size"])) + _objective_errors(cfg)
            + _device_errors(cfg["trainer"], cfg["strategy"], cfg["model"], gpus)
            + _shard_errors(cfg["data"]))
