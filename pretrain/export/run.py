"""`voxfm export`: checkpoint → weights that load without voxfm, plus a model card (README.md).

format=monai (default): `backbone.safetensors` + `backbone.json`; a ViT loads with strict=True into
`monai.networks.nets.ViT(**kwargs)` and `UNETR(...).vit`, a ResEnc into nnU-Net's `ResidualEncoderUNet`.
format=nnunet (ResEnc): `nnunet_pretrained.pth` for `nnUNetv2_train ... -pretrained_weights`, in nnU-Net's
axis order, and `nnunet_plans_fragment.json`. format=nnssl (ResEnc, Primus): nnssl's `checkpoint_final.pth`
(weights in nnU-Net's axis order + adaptation plan) and `adaptation_plan.json`, for nnU-Net's
`nnUNetv2_preprocess_like_nnssl` / `nnUNetv2_train_pretrained`, beside `backbone.safetensors` in voxfm's axis order
(what `voxfm finetune` reads). format=full: every weight of the pretraining module
(backbone + objective heads) + config + step, for `voxfm pretrain init_from=<export>`.

An export is made to be shared: it names its checkpoint by file name, and every path in the stored config
(`run_dir`, `data.shards`, `init_from`, a probe's shards, any other absolute path) by its last component.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from voxfm import __version__
from voxfm.data.stream.crops import triple
from voxfm.models.adapters.common import clone_state
from voxfm.pretrain.config.declarations import read_declared
from voxfm.pretrain.config.renamed import upgraded
from voxfm.pretrain.errors import ConfigError, UnreadableCheckpoints
from voxfm.pretrain.export.formats import exported_weights, nnunet_plans_fragment
from voxfm.pretrain.export.model_card import write_model_card
from voxfm.pretrain.export.nnssl import nnssl_checkpoint
from voxfm.pretrain.export.students import student_config
from voxfm.pretrain.export.swap import source_run, swapped_in
from voxfm.pretrain.runtime.shareable import shareable_config
from voxfm.pretrain.training.checkpoints import (
    backbone_arguments,
    check_config_tree,
    consolidate_deepspeed,
    find_resume_checkpoint,
    is_deepspeed_checkpoint,
    load_checkpoint,
)
from voxfm.pretrain.training.sizes import check_shapes, sized

BACKBONE_PREFIX = "backbone."
FORMATS = ("monai", "nnunet", "nnssl", "full")
NO_DATA = {"spacing": None, "orientation": "RAS", "normalisation": None, "modalities": None, "datasets": None}


def resolve_checkpoint(checkpoint: str) -> Path:
    """A .ckpt file, a DeepSpeed checkpoint folder, or a run_dir (its newest readable checkpoint)."""
    path = Path(checkpoint)
    if (path / "checkpoints").is_dir():
        path, _ = find_resume_checkpoint(path / "checkpoints")
    if path is None or not (path.is_file() or (path / "latest").is_file()):
        raise ConfigError(
            f"checkpoint={checkpoint}: no checkpoint there (expected a .ckpt file or folder, or a run_dir)"
        )
    return path


def _common_meta(ckpt: dict, ckpt_path: Path, config: dict, data: dict) -> dict:
    return {
        "spacing": data["spacing"],
        "orientation": data["orientation"],
        "axis_order": "[C, X, Y, Z] with X → Right, Y → Anterior, Z → Superior (RAS, numpy/nibabel order)",
        "normalisation": data["normalisation"],
        "pretraining_modalities": data["modalities"],
        "pretraining_datasets": data.get("datasets"),
        "step": int(ckpt["global_step"]),
        "objective": config["objective"]["loss"]["_target_"].rsplit(".", 1)[-1],
        "experiment": config.get("experiment_name"),  # the experiment= recipe (None: composed by hand)
        "checkpoint": ckpt_path.name,
        "config": shareable_config(config),
        "voxfm_version": __version__,
        "git_revision": git_revision(),
    }


def git_revision() -> str | None:
    """The commit of the voxfm checkout doing the export (an editable install), or None for an installed wheel."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _stored_config(ckpt: dict, ckpt_path: Path) -> tuple[dict, dict]:
    """The checkpoint's config and data record, checked to be plain data of the shape voxfm writes."""
    config = ckpt.get("voxfm_config") if isinstance(ckpt, dict) else None
    if config is None:
        raise ConfigError(f"checkpoint={ckpt_path} was not written by voxfm pretrain (no voxfm_config)")
    check_config_tree(config, f"checkpoint={ckpt_path}: voxfm_config")
    config = upgraded(config)  # class paths of an older release (`models.vit.ViT`) under today's names
    stored = ckpt.get("voxfm_data") or {}
    check_config_tree(stored, f"checkpoint={ckpt_path}: voxfm_data")
    for key in ("model", "objective", "data"):
        if not isinstance(config.get(key), dict):
            raise ConfigError(f"checkpoint={ckpt_path}: voxfm_config.{key} is missing or not a mapping")
    loss = config["objective"].get("loss")
    if not isinstance(loss, dict) or not isinstance(loss.get("_target_"), str):
        raise ConfigError(f"checkpoint={ckpt_path}: voxfm_config.objective.loss._target_ is missing or not a string")
    declared = read_declared(loss["_target_"])  # read from its source, never imported: a class declaring an objective
    if declared is None or type(declared.declaration).__name__ != "ObjectiveDeclaration":
        raise ConfigError(
            f"checkpoint={ckpt_path}: voxfm_config.objective.loss._target_={loss['_target_']!r}: refused; a stored "
            "config may only name a class that declares an objective"
        )
    _check_data_record(stored, ckpt_path)
    if not isinstance(stored, dict) or not isinstance(ckpt.get("global_step"), int):
        raise ConfigError(f"checkpoint={ckpt_path}: voxfm_data must be a mapping and global_step an integer")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"checkpoint={ckpt_path}: state_dict must map names to tensors")
    return config, {**NO_DATA, **stored}


def _check_data_record(stored: dict, ckpt_path: Path) -> None:
    """voxfm_data is what the shard set recorded; each field has the shape voxfm writes, or the export stops here,
    before anything is written (a model card or plans fragment built from a crafted value would fail half-way)."""

    def number_list(v) -> bool:
        return isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and 0 < x < 1e6 for x in v)

    shapes = {
        "spacing": lambda v: v is None or number_list(v),
        "orientation": lambda v: isinstance(v, str) and len(v) <= 8,
        "normalisation": lambda v: v is None or isinstance(v, dict),
        "modalities": lambda v: v is None or (isinstance(v, dict) and all(isinstance(n, int) for n in v.values())),
        "datasets": lambda v: v is None or isinstance(v, (dict, list)),
    }
    for key, fits in shapes.items():
        if key in stored and not fits(stored[key]):
            raise ConfigError(
                f"checkpoint={ckpt_path}: voxfm_data.{key}={stored[key]!r} is not what a shard set records"
            )


def teacher_prefix(config: dict) -> str | None:
    """ "objective.teacher_backbone." when the stored objective declares an EMA teacher, else None."""
    target = config.get("objective", {}).get("loss", {}).get("_target_")
    declared = read_declared(target) if isinstance(target, str) else None
    return "objective.teacher_backbone." if declared is not None and declared.declaration.teacher else None


def fp32_teacher(state: dict[str, torch.Tensor], backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The teacher backbone's fp32 copies a half-precision (DeepSpeed bf16) run keeps (`objective.teacher_fp32.t<i>`,
    in parameter order, the backbone's first) by parameter name; {} for runs whose teacher is fp32 itself."""
    masters = "objective.teacher_fp32.t"
    if masters + "0" not in state:
        return {}
    return {name: state[f"{masters}{i}"] for i, (name, _) in enumerate(backbone.named_parameters())}


def backbone_state(
    state: dict[str, torch.Tensor], config: dict, backbone: torch.nn.Module, student: str | None = None
) -> dict:
    """The weights of the model a stored config exports, from the module's `state`: the EMA teacher where the
    objective keeps one (self-distillation; its fp32 copies under DeepSpeed bf16), a distillation run's `student`
    where named, else the backbone."""
    prefix = f"objective.students.{student}.backbone." if student else teacher_prefix(config) or BACKBONE_PREFIX
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if prefix != BACKBONE_PREFIX:
        weights.update(fp32_teacher(state, backbone))
    return weights


def run_export(
    checkpoint: str,
    output: str,
    in_channels: int | None = None,
    export_format: str = "monai",
    overwrite: bool = False,
    student: str | None = None,
) -> Path:
    """Writes the export into `output` (locked, swapped in whole; a folder holding anything but an export of the
    same run is refused without `overwrite`); returns `output`. `student`: a distillation run's other student."""
    if export_format not in FORMATS:
        raise ConfigError(f"format={export_format!r}; allowed: {', '.join(FORMATS)}")
    if in_channels is not None and in_channels < 1:
        raise ConfigError(f"in_channels={in_channels}: expected >= 1")
    ckpt_path = resolve_checkpoint(checkpoint)
    # a DeepSpeed folder is consolidated from every rank's shard into the same fp32 weights a DDP run has
    try:
        ckpt = consolidate_deepspeed(ckpt_path) if is_deepspeed_checkpoint(ckpt_path) else load_checkpoint(ckpt_path)
    except ConfigError:
        raise
    except Exception as err:  # truncated, a lying record, DeepSpeed's own errors on a damaged folder: one line
        first = str(err).splitlines()[0] if str(err) else ""
        raise UnreadableCheckpoints(f"checkpoint={ckpt_path} cannot be read ({type(err).__name__}: {first})") from None
    config, data = _stored_config(ckpt, ckpt_path)
    config = student_config(config, student, f"checkpoint={ckpt_path}", export_format)
    # checked before anything is written, for every format; built from the allowlist, never `instantiate`d
    model_key = f"objective.loss.students.{student}" if student else "model"  # what an error names
    backbone_class, backbone_kwargs = backbone_arguments(
        config["model"], f"checkpoint={ckpt_path}: voxfm_config.{model_key}"
    )
    declared = backbone_class.declaration
    architecture = declared.architecture
    if export_format not in declared.formats:
        routes = {"nnunet": "model=resenc_m or resenc_l", "nnssl": "model=resenc_l, or primus_m for a Primus"}
        hint = f" (format={export_format} needs a backbone nnU-Net builds: {routes[export_format]})" if (
            export_format in routes) else ""  # fmt: skip
        raise ConfigError(
            f"format={export_format}: {config['model']['_target_']} exports as {', '.join(declared.formats)}{hint}"
        )
    if export_format == "full" and in_channels is not None:
        raise ConfigError(
            "in_channels: format=full keeps the pretraining module as it is; inflate in format=monai, nnunet or nnssl"
        )
    if export_format == "nnunet" and not data["spacing"]:
        raise ConfigError(
            f"format=nnunet: checkpoint={ckpt_path} does not record its shard set's spacing, which nnU-Net's "
            "plans need; export format=monai (or nnssl) instead"
        )
    if export_format != "full":  # the backbone is built: its size first, on the meta device, before anything is written
        where = f"checkpoint={ckpt_path}: voxfm_config.{model_key}"
        described = sized(lambda: backbone_class(**backbone_kwargs), where)
        state = backbone_state(ckpt["state_dict"], config, described, student)  # self-distillation: the EMA teacher
        check_shapes(described, state, f"checkpoint={ckpt_path}")
    run = source_run(ckpt_path)
    with swapped_in(output, run, overwrite) as out:  # locked; written beside, then swapped in whole
        meta = {"format": f"voxfm-{export_format}/1", **_common_meta(ckpt, ckpt_path, config, data)}
        meta["source_run"] = run  # a digest of the run's folder: which exports may replace which
        if student:
            meta["student"] = student
        if export_format == "full":
            save_file(clone_state(ckpt["state_dict"]), str(out / "model.safetensors"))
            meta["architecture"] = architecture
            (out / "full.json").write_text(json.dumps(meta, indent=1))
            write_model_card(out, meta, export_format, backbone_class.adapter)
            return Path(output)
        backbone = backbone_class(**backbone_kwargs)  # only to read the architecture's kwargs
        weights, arch = exported_weights(state, backbone, in_channels)
        meta.update(arch, channel_inflation=None if in_channels in (None, 1) else {"from": 1, "to": in_channels})
        if export_format == "nnunet":
            weights, kwargs = backbone_class.adapter.nnunet_axes(weights, arch["kwargs"])
            torch.save(
                {"network_weights": weights, "voxfm": {k: v for k, v in meta.items() if k != "config"}},
                out / "nnunet_pretrained.pth",
            )
            fragment = nnunet_plans_fragment(
                arch,
                kwargs,
                list(triple(config["data"]["crop_size"])),
                data["spacing"],
                data["normalisation"],
                data["modalities"],
            )
            (out / "nnunet_plans_fragment.json").write_text(json.dumps(fragment, indent=1))
            meta["nnunet_kwargs"] = kwargs
        elif export_format == "nnssl":
            init_args = {k: meta[k] for k in ("config", "step", "checkpoint")}  # what voxfm pretraining ran with
            checkpoint = nnssl_checkpoint(
                backbone_class.adapter,
                weights,
                arch,
                list(triple(config["data"]["crop_size"])),
                data["spacing"],
                data["normalisation"],
                f"voxfm.{meta['objective']}",
                init_args,
            )
            torch.save(checkpoint, out / "checkpoint_final.pth")
            plan = checkpoint["nnssl_adaptation_plan"]
            (out / "adaptation_plan.json").write_text(
                json.dumps({**plan, "trainer_name": checkpoint["trainer_name"]}, indent=1)
            )
            meta["nnssl_architecture"] = plan["architecture_plans"]
        if export_format != "nnunet":  # voxfm's axis order: what `voxfm finetune backbone=<this folder>` reads
            save_file(weights, str(out / "backbone.safetensors"))
        (out / "backbone.json").write_text(json.dumps(meta, indent=1))
        write_model_card(out, meta, export_format, backbone_class.adapter)
        return Path(output)
