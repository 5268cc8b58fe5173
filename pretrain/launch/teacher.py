"""The frozen teacher of `objective=distill`, read from a format=full export of a self-distillation run: its EMA
teacher's backbone (built through the backbone allowlist and sized on the meta device, never `instantiate`d), its
DINO / iBOT heads sized from the run's stored `objective.loss`, and its last running centres. A composition step:
`build_module` reads it and hands it to the objective (objectives import no file readers)."""

from __future__ import annotations

from pathlib import Path

import torch

from voxfm.pretrain.config.declarations import read_declared
from voxfm.pretrain.errors import ConfigError
from voxfm.pretrain.export.full import full_export_parts
from voxfm.pretrain.objectives.dino.heads import DINOHead
from voxfm.pretrain.objectives.distill import FrozenTeacher

HEADS = {"head": "objective.teacher_head.", "ibot_head": "objective.teacher_ibot_head."}


def _head(state: dict, prefix: str, in_dim: int, loss: dict, out_dim: int, where: str) -> DINOHead:
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    head = DINOHead(in_dim, out_dim, loss.get("hidden_dim", 2048), loss.get("bottleneck_dim", 256))
    try:
        head.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{where}: {prefix}* do not fit its config's head ({str(err).splitlines()[0]})") from None
    return head


def load_teacher(folder: str | Path) -> FrozenTeacher:
    """A format=full export of objective=dino → its frozen teacher. Anything else is a ConfigError naming it."""
    where = f"objective.loss.teacher={folder}"
    path = Path(folder)
    if not (path / "full.json").is_file() or not (path / "model.safetensors").is_file():
        raise ConfigError(f"{where}: expected a `voxfm export format=full` folder (full.json, model.safetensors)")
    meta, config, state, backbone, weights = full_export_parts(path, where)  # checked, sized, never instantiated
    loss = (config.get("objective") or {}).get("loss") or {}
    target = loss.get("_target_")
    declared = read_declared(target) if isinstance(target, str) else None
    if declared is None or not getattr(declared.declaration, "teacher", False):
        raise ConfigError(
            f"{where}: an export of objective={str(target).rsplit('.', 1)[-1]}, which keeps no EMA teacher and "
            "heads; distillation needs the format=full export of a self-distillation run (objective=dino)"
        )
    backbone.load_state_dict(weights, strict=True)  # the EMA teacher (its fp32 copies for a bf16 run)
    out_dim = loss.get("out_dim", 65536)
    head = _head(state, HEADS["head"], backbone.spec.feature_dim, loss, out_dim, where)
    ibot_head = None
    if any(k.startswith(HEADS["ibot_head"]) for k in state):
        patch_out_dim = loss.get("patch_out_dim") or out_dim
        ibot_head = _head(state, HEADS["ibot_head"], backbone.spec.feature_dim, loss, patch_out_dim, where)
    centres = {
        "centre": state.get("objective.centre", torch.zeros(1, out_dim)),
        "patch_centre": state.get("objective.patch_centre", torch.zeros(1, loss.get("patch_out_dim") or out_dim)),
    }
    return FrozenTeacher(backbone, head, ibot_head, centres)
