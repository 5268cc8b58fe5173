"""Resume compares the new config with the one stored in the checkpoint (`voxfm_config`), key by key.

Three kinds of keys (a key matches an entry when it equals it or lies under it, e.g. `model` covers
`model.num_layers`):
- `FROZEN`: the model and the data contract. A change refuses to resume: the weights or the views would not
  mean what they meant. Start a new `run_dir` (or `init_from` an export) instead.
- `FREE`: where the run goes and how it is watched or run, not what it learns: more steps, logging, checkpoint
  cadence and retention, workers, world size and strategy (a DDP run resumed on one process, a DeepSpeed run
  on another world size through its universal checkpoint; a format the strategy cannot read fails in its
  loader), compile. Changed without asking.
- everything else (optimiser, schedule, batch, data mix, precision, clipping, new keys): changed
  only when named in `resume.allow_changes=[optim.optimizer.lr, ...]`.
A key voxfm added after a checkpoint was written (`ADDED`) is absent from its stored config; at the value that
does what the run did without it, it is no change, so such runs resume as they are.
Allowed and free changes are returned for `events.jsonl`.
"""

from __future__ import annotations

from pathlib import Path

from voxfm.pretrain.errors import ConfigError

FROZEN = ("model", "objective", "seed", "data.crop_size", "data.region_size")
FREE = (
    "run_dir",
    "experiment_name",
    "init_from",
    "resume",
    "logger",
    "callbacks",
    "trainer.max_steps",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.log_every_n_steps",
    "trainer.checkpoint_every_n_steps",
    "trainer.keep_last_n",
    "trainer.keep_every_n_steps",
    "trainer.progress_bar",
    "trainer.images_every_n_steps",
    "trainer.max_nonfinite_steps",
    "trainer.compile",
    "trainer.compile_mode",
    "trainer.activation_checkpointing",
    "trainer.peak_tflops",
    "data.num_workers",
    "data.loader",
    "data.device_pool_gib",  # where decoded volumes wait and regions are cut (an old GPU run resumes with the pool)
    "data.device_pool_volumes",
    "data.max_sample_mb",
    "strategy",
)
ABSENT = "<absent>"
ADDED = {
    "optim.layer_decay": 1.0,
    "optim.weight_decay_end": None,
    "optim.freeze_last_layer_steps": 0,
    "trainer.compile_mode": "default",
    "trainer.fp8": False,
    "data.device_pool_gib": None,  # the default (free to change: on a GPU an old run resumes with the device pool)
    "data.device_pool_volumes": 1024,
    # objective=dino's Gram anchoring, off (at weight 0 the other keys change nothing)
    "objective.loss.gram._target_": "voxfm.pretrain.objectives.dino.gram.GramAnchoring",
    "objective.loss.gram.weight": 0.0,
    "objective.loss.gram.start_step": 0,
    "objective.loss.gram.refresh_every": None,
    "objective.loss.gram.teacher_scale": 1,
}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists and empty mappings are values."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def covered(key: str, entries) -> bool:
    return any(key == e or key.startswith(e + ".") for e in entries)


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """{dotted key: (old value, new value)} for every key that differs; a key only one side has is `ABSENT`
    on the other."""
    a, b = flatten(old), flatten(new)
    return {
        k: (a.get(k, ABSENT), b.get(k, ABSENT))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, ABSENT) != b.get(k, ABSENT)
    }


def check_resume_config(old: dict, new: dict, allow_changes: list[str], checkpoint: str | Path) -> dict[str, list]:
    """→ the changes to record, {key: [old, new]}; raises ConfigError with one line per refused key."""
    refused, recorded = [], {}
    for key, (before, after) in config_changes(old, new).items():
        if before == ABSENT and key in ADDED and after == ADDED[key]:
            continue
        change = f"{key}: {before!r} → {after!r}"
        if covered(key, FROZEN):
            refused.append(
                f"{change} (changes the model or the data contract: start a new run_dir, or init_from "
                "an export of this run)"
            )
        elif covered(key, FREE) or covered(key, allow_changes):
            recorded[key] = [before, after]
        else:
            refused.append(f"{change} (to change it on resume, add it to resume.allow_changes=[{key}])")
    if refused:
        raise ConfigError(
            f"cannot resume from {checkpoint}: the config differs from the one it was trained with; "
            "nothing was written:\n  " + "\n  ".join(refused)
        )
    return recorded
