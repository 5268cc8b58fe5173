"""Finding and safely reading checkpoints (plain tensors and containers only: no arbitrary unpickling).

A checkpoint is a file (single process, DDP) or a DeepSpeed folder `<name>.ckpt/` holding `checkpoint/*.pt`
and, written last, `latest`: a folder without it is incomplete. DeepSpeed's own loaders ask for
`weights_only=False`; `deepspeed_weights_only()` forces `weights_only=True` with only DeepSpeed's three
plain data classes allowed, for resuming and for consolidation alike.

A checkpoint's or export's stored config is data, never instructions: `backbone_from_config` rebuilds the
network from an allowlist of voxfm's backbones with plain keyword arguments, and refuses anything Hydra would
have turned into a call (`_args_`, `_partial_`, a nested `_target_`, ...).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from voxfm.pretrain.config.declarations import declared_backbones
from voxfm.pretrain.errors import ConfigError, UnreadableCheckpoints
from voxfm.pretrain.training.sizes import check_arguments, check_stored_records, sized

PERIODIC = re.compile(r"step(\d+)\.ckpt")
DEEPSPEED_MODEL_STATES = (
    "checkpoint/mp_rank_00_model_states.pt",
    "checkpoint/zero_pp_rank_0_mp_rank_00_model_states.pt",
)
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
PLAIN = (bool, int, float, str, type(None))


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    return Path(path).is_dir()


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """`mmap=True` maps the tensors instead of reading them: cheap when only metadata is needed. For a DeepSpeed
    folder: its client state (global step, voxfm config, ...) from the model-states file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "latest").is_file():
            raise ConfigError(f"{path}: incomplete DeepSpeed checkpoint (no `latest` file)")
        # ZeRO-1/2 write mp_rank_00_model_states.pt; ZeRO-3 one per rank, zero_pp_rank_0_... holding the client state
        states = [path / f for f in DEEPSPEED_MODEL_STATES if (path / f).is_file()]
        if not states:
            raise ConfigError(f"{path}: no model-states file in this DeepSpeed checkpoint")
        path = states[0]
    check_stored_records(path)  # a compressed record could inflate to gigabytes
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


@contextmanager
def deepspeed_weights_only():
    classes = [getattr(importlib.import_module(m), n) for m, n in (g.rsplit(".", 1) for g in DEEPSPEED_SAFE_GLOBALS)]
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(classes):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def consolidate_deepspeed(path: str | Path) -> dict:
    """A DeepSpeed ZeRO-1/2/3 folder → its client state with `state_dict` = the fp32 weights of every rank."""
    if torch.cuda.is_available() is False:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint = load_checkpoint(path)
    with deepspeed_weights_only():
        state = get_fp32_state_dict_from_zero_checkpoint(str(path))
    checkpoint["state_dict"] = {k.removeprefix("_forward_module."): v for k, v in state.items()}
    return checkpoint


def _readable_step(path: Path, failures: list[str]) -> int | None:
    """The checkpoint's global step, without reading its (possibly GB-sized) tensors; None if damaged (its name and
    error appended to `failures`)."""
    try:
        return int(load_checkpoint(path, mmap=True)["global_step"])
    except Exception as err:  # a damaged file: say so and fall back to an older one
        failures.append(f"{path.name} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        print(f"voxfm: cannot read {path} ({type(err).__name__}: {err}); trying an older checkpoint")
        return None


def find_resume_checkpoint(checkpoint_dir: Path) -> tuple[Path | None, int]:
    """→ (checkpoint to resume from, its global step), or (None, 0) for a fresh run.

    The newest readable checkpoint wins: a crash between writing `stepN.ckpt` and refreshing
    `last.ckpt` leaves the periodic one newer, and a damaged file falls back to the next newest. A folder whose
    checkpoints are all unreadable is refused (`UnreadableCheckpoints`, exit 4) rather than started over: a run
    from step 0 would overwrite them and its retention delete the rest.
    """
    if not checkpoint_dir.is_dir():
        return None, 0
    candidates: list[tuple[int, int, Path]] = []  # (step, prefer last.ckpt on ties, path)
    failures: list[str] = []
    last = checkpoint_dir / "last.ckpt"
    if last.exists() and (step := _readable_step(last, failures)) is not None:
        candidates.append((step, 1, last))
    for path in checkpoint_dir.glob("step*.ckpt"):
        if match := PERIODIC.fullmatch(path.name):
            candidates.append((int(match.group(1)), 0, path))
    for step, is_last, path in sorted(candidates, reverse=True):
        if is_last or _readable_step(path, failures) is not None:
            return path, step
    if failures:
        raise UnreadableCheckpoints(
            f"{checkpoint_dir} holds {len(failures)} checkpoint(s) and none can be read: {'; '.join(failures)}. "
            "Nothing was written: fix or move them (a new run then starts from step 0), or use another run_dir"
        )
    return None, 0


def check_plain(value, where: str) -> None:
    """A stored value is plain data: None, a bool, int, float or string, or a list of those (nested lists too)."""
    if isinstance(value, PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict) and "_target_" in value:
        raise ConfigError(
            f"{where}: refused a nested _target_={value['_target_']!r}; a stored config is data, its "
            "arguments must be plain values (int, float, bool, string or lists of those)"
        )
    raise ConfigError(
        f"{where}: refused a {type(value).__name__}; a stored config is data, its arguments must be "
        "plain values (int, float, bool, string or lists of those)"
    )


def check_config_tree(value, where: str) -> None:
    """The whole stored config is JSON-like containers (it is copied into backbone.json): no tensors, no objects."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: refused a key {k!r} that is not a string")
            check_config_tree(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_config_tree(v, f"{where}[{i}]")
    elif not isinstance(value, PLAIN):
        raise ConfigError(f"{where}: refused a {type(value).__name__}; a stored config holds plain values only")


def backbone_arguments(model: dict, where: str) -> tuple[type, dict]:
    """A stored `model` config → (the voxfm backbone class it names, one of `declared_backbones()`: the classes
    that declare themselves backbones in voxfm's `models` package or in a module the environment's VOXFM_BACKBONES
    names, nothing else is imported; its plain keyword
    arguments), or a ConfigError naming the refused key. `where` names the config in errors (e.g.
    "checkpoint=last.ckpt: voxfm_config.model")."""
    if not isinstance(model, dict):
        raise ConfigError(f"{where}: expected a mapping, got a {type(model).__name__}")
    target = model.get("_target_")
    backbones = declared_backbones()
    if not isinstance(target, str) or target not in backbones:
        raise ConfigError(
            f"{where}._target_={target!r}: refused; a stored config may only name voxfm's backbones "
            f"({', '.join(backbones)})"
        )
    module, name = target.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    allowed = [p for p in inspect.signature(cls).parameters if p != "self"]
    kwargs = {}
    for key, value in model.items():
        if key == "_target_":
            continue
        if not isinstance(key, str) or key.startswith("_"):
            raise ConfigError(
                f"{where}.{key}: refused; a stored config is data: no _args_, _partial_, _recursive_, "
                "_convert_ or other Hydra keys"
            )
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: not an argument of {target} (allowed: {', '.join(allowed)})")
        check_plain(value, f"{where}.{key}")
        kwargs[key] = value
    check_arguments(kwargs, where)
    return cls, kwargs


def backbone_from_config(model: dict, where: str):
    """The backbone a stored config describes; never Hydra's `instantiate`, which would call whatever a crafted
    file names."""
    cls, kwargs = backbone_arguments(model, where)
    sized(lambda: cls(**kwargs), where)  # its size first, on the meta device
    return cls(**kwargs)


def read_safetensors(path: Path, where: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a damaged or lying header is a ConfigError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"{where}: {path.name} unreadable ({type(err).__name__}: {err})") from None
