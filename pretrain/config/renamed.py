"""Keys, classes and modules renamed in voxfm 0.1: the old names keep working until 0.2, with a one-line notice.

voxfm's packages were top-level `pretrain`, `models`, `data` before they moved under the one import root
`voxfm`: a class path of that time (`models.vit.ViT` in a checkpoint, a run_dir's config.yaml, an export's
backbone.json or a user's own experiment file) is read as `voxfm.models.vit.ViT`, and a module of the flat `data/`
of that time under its place now (`data.views.ViewPipeline` → `voxfm.data.views.pipeline.ViewPipeline`). Only 0.1's
own modules are mapped (a table, not a prefix rule), so a user's `models.mynet.MyNet` keeps naming the user's class.
This module is the one place that maps old names.

`objective.stage` is now `objective.views` (the device-side view pipeline: crops, augmentation, masks; "stage"
also meant an encoder stage and a Lightning stage), and its class `data.views.ViewStage` is `ViewPipeline`.
An override, an experiment file, `resume.allow_changes` or a checkpoint's stored config that uses an old name is
read as the new one. Plain Python, no torch.
"""

from __future__ import annotations

import sys

UNTIL = "0.2"
KEYS = {"objective.stage": "objective.views"}
TARGETS = {
    "data.views.ViewStage": "voxfm.data.views.pipeline.ViewPipeline",
    "voxfm.data.views.pipeline.ViewStage": "voxfm.data.views.pipeline.ViewPipeline",
}
MODULES = {  # 0.1's modules that a config could name, by their name now (data/ was flat before it was split)
    **{f"models.{m}": f"voxfm.models.{m}" for m in ("eva", "heads", "mae_decoder", "primus", "resenc", "vit")},
    **{
        f"pretrain.objectives.{m}": f"voxfm.pretrain.objectives.{m}"
        for m in ("mae", "mae_contrastive", "mim", "simclr", "dino.objective", "dino.heads")
    },
    **{
        f"data.{m}": f"voxfm.data.ingest.{m}"
        for m in ("inputs", "dicom", "volumes", "preprocess", "resample", "payload", "locks", "inspect", "montage")
    },
    "data.ingest": "voxfm.data.ingest.run",
    "data.shards": "voxfm.data.ingest.shard_set",
    **{f"data.{m}": f"voxfm.data.stream.{m}" for m in ("sources", "pool", "loader", "device_feed", "crops")},
    "data.stream": "voxfm.data.stream.regions",
    "data.views": "voxfm.data.views.pipeline",
    **{f"data.{m}": f"voxfm.data.views.{m}" for m in ("multicrop", "masking", "augment")},
    "data.labelled": "voxfm.pretrain.finetune.labelled",
}
_told: set[str] = set()


def notice(old: str, new: str) -> None:
    if old not in _told:
        _told.add(old)
        print(f"voxfm: `{old}` is now `{new}`; the old name works until voxfm {UNTIL}", file=sys.stderr)


def renamed_key(key: str) -> str:
    """A dotted key (or `group.key` path) with an old prefix → the same key under its new name."""
    for old, new in KEYS.items():
        if key == old or key.startswith(old + "."):
            notice(old, new)
            return new + key[len(old) :]
    return key


def renamed_override(override: str) -> str:
    """`objective.stage.n_views=2` (also `+`, `++`, `~` forms) → `objective.views.n_views=2`."""
    sign = override[: len(override) - len(override.lstrip("+~"))]
    key, eq, value = override[len(sign) :].partition("=")
    return sign + renamed_key(key) + eq + value


def upgraded(config: dict) -> dict:
    """A plain config (e.g. a checkpoint's `voxfm_config`) with old keys and targets under their new names."""
    config = _targets(config)
    for old, new in KEYS.items():
        parent, _, leaf = old.rpartition(".")
        node = config.get(parent) if isinstance(config, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), dict):
            new_leaf = new.rpartition(".")[2]
            node = dict(node)
            node[new_leaf] = {**node.get(new_leaf, {}), **node.pop(leaf)}
            config = {**config, parent: node}
    return config


def renamed_target(target):
    """A `_target_` of an older release (a renamed class, or a class in one of 0.1's modules, `MODULES`) → its name
    now; any other value unchanged: a user's own `models.mynet.MyNet` stays theirs."""
    if not isinstance(target, str):
        return target
    if target in TARGETS:
        notice(target, TARGETS[target])
        return TARGETS[target]
    module, _, name = target.rpartition(".")
    if module in MODULES:
        notice(target, f"{MODULES[module]}.{name}")
        return f"{MODULES[module]}.{name}"
    return target


def _targets(value):
    if isinstance(value, dict):
        return {k: (renamed_target(v) if k == "_target_" else _targets(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_targets(v) for v in value]
    return value
