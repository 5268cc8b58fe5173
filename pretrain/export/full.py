"""Reading a `voxfm export format=full` folder (`full.json` + `model.safetensors`): checked, sized on the meta
device, built through the allowlist, never `instantiate`d — for `init_from`, a distillation teacher, `finetune`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from voxfm.data.ingest.safe_files import read_small_text
from voxfm.pretrain.config.renamed import upgraded
from voxfm.pretrain.errors import ConfigError
from voxfm.pretrain.export.run import backbone_state
from voxfm.pretrain.training.checkpoints import backbone_arguments, check_config_tree, read_safetensors
from voxfm.pretrain.training.sizes import check_shapes, sized


def full_export_parts(folder: str | Path, where: str) -> tuple[dict, dict, dict, torch.nn.Module, dict]:
    """A format=full export → (full.json, its stored config under today's names, every weight of
    model.safetensors, the backbone that config names — sized on the meta device, built through the allowlist,
    never `instantiate`d — and the weights of the model it exports: the teacher for self-distillation)."""
    path = Path(folder)
    try:
        meta = json.loads(read_small_text(path / "full.json"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}: full.json unreadable ({type(err).__name__}: {err})") from None
    check_config_tree(meta, f"{where}: full.json")
    config = upgraded(meta.get("config") if isinstance(meta, dict) and isinstance(meta.get("config"), dict) else {})
    cls, kwargs = backbone_arguments(config.get("model"), f"{where}: full.json: config.model")
    described = sized(lambda: cls(**kwargs), f"{where}: full.json: config.model")  # nothing allocated yet
    state = read_safetensors(path / "model.safetensors", where)
    weights = backbone_state(state, config, described)
    check_shapes(described, weights, f"{where}: model.safetensors")
    return meta, config, state, cls(**kwargs), weights


def full_export_backbone(folder: str | Path, where: str) -> tuple[dict, torch.nn.Module, dict]:
    """`full_export_parts` without the config and the whole state: (full.json, the backbone, its weights)."""
    meta, _, _, backbone, weights = full_export_parts(folder, where)
    return meta, backbone, weights
