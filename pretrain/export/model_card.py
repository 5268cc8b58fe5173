"""The README.md every export carries: Hugging Face front matter, what the weights saw, how to feed them, how to
load them.

The loading snippet is the first ```python block and the MONAI preprocessing the second; tests run both verbatim.
"""

from __future__ import annotations

import json
from pathlib import Path

from voxfm.pretrain.config.declarations import declared_backbones

# Besides the declared backbones' export classes, the classes nnU-Net's ResEnc kwargs name.
LAYER_CLASSES = (
    "torch.nn.modules.conv.Conv3d",
    "torch.nn.modules.instancenorm.InstanceNorm3d",
    "torch.nn.modules.activation.LeakyReLU",
)


def snippet_classes() -> tuple[str, ...]:
    """The classes a loading snippet (and `voxfm.load_backbone`) may build: names from backbone.json are resolved
    through a dict of these (only those the export names), never with `pydoc.locate`, so a tampered backbone.json
    cannot name another callable."""
    return (*(d.declaration.export_class for d in declared_backbones().values()), *LAYER_CLASSES)


LOAD_MONAI = """import json, safetensors.torch
IMPORTS
classes = {  # the only classes this snippet builds: backbone.json is data
CLASSES}
def resolve(name):
    if not isinstance(name, str) or name not in classes:
        raise ValueError(f"backbone.json names {name!r}; this export loads only {sorted(classes)}")
    return classes[name]
meta = json.load(open("backbone.json"))
kwargs = {k: resolve(v) if v and k in meta["kwargs_requires_import"] else v for k, v in meta["kwargs"].items()}
net = resolve(meta["class"])(**kwargs)
net.load_state_dict(safetensors.torch.load_file("backbone.safetensors"), strict=True)"""

LOAD_NNUNET = """import json
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
arch = json.load(open("nnunet_plans_fragment.json"))["plans"]["configurations"]["3d_fullres_voxfm"]["architecture"]
allowed = {  # nnU-Net resolves these names with pydoc.locate: only the exported ones may pass
CLASSES}
names = [arch["network_class_name"], *(arch["arch_kwargs"][k] for k in arch["_kw_requires_import"])]
if not all(n is None or isinstance(n, str) and n in allowed for n in names):
    raise ValueError(f"nnunet_plans_fragment.json names {names}; this export loads only {sorted(allowed)}")
net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                             input_channels=INPUT_CHANNELS, output_channels=3, deep_supervision=True)
load_pretrained_weights(net, "nnunet_pretrained.pth")  # every key but the segmentation layers, shapes checked"""

LOAD_NNSSL = """import torch
ckpt = torch.load("checkpoint_final.pth", weights_only=True)  # as nnU-Net's fine-tuning reads it
plan = ckpt["nnssl_adaptation_plan"]  # architecture_plans, pretrain_plan, key_to_encoder, key_to_stem, ...
weights = ckpt["network_weights"]  # nnU-Net's axis order: [C, Z, Y, X] of the RAS image
print(plan["architecture_plans"]["arch_class_name"], len(weights), "tensors")"""

LOAD_FULL = """import json, safetensors.torch
meta = json.load(open("full.json"))  # config, step, data
state = safetensors.torch.load_file("model.safetensors")  # backbone.* and the objective's heads"""


def continue_command(meta: dict) -> list[str]:
    """The command that continues this pretraining on new data (format=full): the recipe by name, the three
    placeholders for the user's folders. A test runs it with the placeholders filled in."""
    recipe = (
        f"experiment={meta['experiment']}" if meta.get("experiment") else "<the run's model= and objective= overrides>"
    )
    return [
        "",
        "## Continue pretraining",
        "On new data, with a fresh optimiser, from this export's step (its weights and the objective's heads):",
        "```bash",
        f"voxfm pretrain {recipe} init_from=<this folder> data.shards=<your shard set> run_dir=<a new run_dir>",
        "```",
    ]


NNUNET_STEPS = """1. Add `"overwrite_image_reader_writer": "NibabelIOWithReorient"` to your dataset.json (images are
   read in RAS, as in pretraining), then `nnUNetv2_plan_and_preprocess -d <ID> -c 3d_fullres`.
2. Copy `$nnUNet_preprocessed/Dataset<ID>_<name>/nnUNetPlans.json` to `nnUNetPlans_voxfm.json` beside it and merge
   `plans` of `nnunet_plans_fragment.json` into the copy (its `plans_name`, `transpose_forward`,
   `transpose_backward`, and `configurations.3d_fullres_voxfm` added), then
   `nnUNetv2_preprocess -d <ID> -plans_name nnUNetPlans_voxfm -c 3d_fullres_voxfm`. A plans file of its own: the
   axis order stays the one these weights were transposed for, and 3d_fullres's data stay as planned.
3. `nnUNetv2_train <ID> 3d_fullres_voxfm <fold> -p nnUNetPlans_voxfm -pretrained_weights nnunet_pretrained.pth`"""


NNSSL_STEPS = """Needs nnU-Net's main branch (pretrained fine-tuning arrived there in July 2026; the 2.8.1 release has
neither command). voxfm's tests build nnU-Net's network from the adaptation plan and load `network_weights` into it
strictly, but have not run these commands.
1. Add `"overwrite_image_reader_writer": "NibabelIOWithReorient"` to your dataset.json (images are read in RAS, as
   in pretraining), then `nnUNetv2_plan_and_preprocess -d <ID> -c 3d_fullres` (the step below starts from its plans).
2. `nnUNetv2_preprocess_like_nnssl -d <ID> -n <name> -pc checkpoint_final.pth -am like_pretrained`
3. `nnUNetv2_train_pretrained <ID> 3d_fullres <fold> -p ptPlans__<name>____IDENTIFIERTRAINER` (the plans step 2
   wrote, named here for a 1-channel dataset: one `_Z` more per further channel)"""


def front_matter(meta: dict, export_format: str) -> list[str]:
    """Hugging Face's model card metadata (the YAML block the Hub reads): license, library, tags."""
    modalities = sorted(m.lower() for m in (meta.get("pretraining_modalities") or {}))
    tags = ["medical-imaging", "3d", "self-supervised", "voxfm", meta["objective"].lower(), f"format-{export_format}"]
    return [
        "---",
        "license: other  # set the license your pretraining data allows",
        "library_name: voxfm",
        "pipeline_tag: image-feature-extraction",
        "tags:",
        *(f"- {t}" for t in [*tags, *modalities]),
        "---",
        "",
    ]


MONAI_CHAIN = """from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, Orientationd,
                              ScaleIntensityRanged, ScaleIntensityRangePercentilesd, Spacingd)
def preprocessing(modality):  # "CT", "MR", "PET": as the pretraining volumes were fed, for a dict {"image": path}
    load = [LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=SPACING, mode="bilinear")]
    if modality == "CT":
        return Compose(load + [ScaleIntensityRanged(keys="image", a_min=CT_LOW, a_max=CT_HIGH, b_min=0.0, b_max=1.0,
                                                    clip=True)])
    return Compose(load + [ScaleIntensityRangePercentilesd(keys="image", lower=P_LOW, upper=P_HIGH, b_min=0.0,
                                                           b_max=1.0, clip=True)])"""


def monai_chain(meta: dict) -> str | None:
    """The MONAI transforms that reproduce the pretraining input (RAS, the spacing, the intensity mapping)."""
    norm, spacing = meta.get("normalisation") or {}, meta.get("spacing")
    if not spacing or "CT" not in norm or "MR" not in norm:
        return None
    ct, mr = norm["CT"], norm["MR"]
    values = {"SPACING": list(spacing), "CT_LOW": ct["low"], "CT_HIGH": ct["high"]}
    values |= {"P_LOW": mr["percentiles"][0], "P_HIGH": mr["percentiles"][1]}
    chain = MONAI_CHAIN
    for key, value in values.items():
        chain = chain.replace(key, repr(value))
    return chain


def _normalisation_lines(norm: dict | None) -> list[str]:
    if not norm:
        return ["  - not recorded (checkpoint without shard-set metadata)"]
    return [
        f"  - {m}: {json.dumps({k: v for k, v in n.items() if k != 'note'})} — {n.get('note', '')}"
        for m, n in norm.items()
    ]


def exported_classes(meta: dict) -> list[str]:
    """The dotted class names an export's description names (its class and the kwargs nnU-Net resolves), each
    one of `snippet_classes()`."""
    names = [meta["class"], *(meta["kwargs"][k] for k in meta["kwargs_requires_import"] if meta["kwargs"][k])]
    known = snippet_classes()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"model card: no loading snippet for {unknown}; known classes: {', '.join(known)}")
    return list(dict.fromkeys(names))


def loading_snippet(meta: dict, export_format: str) -> str:
    if export_format == "full":
        return LOAD_FULL
    if export_format == "nnssl":
        return LOAD_NNSSL
    names = exported_classes(meta)
    if export_format == "nnunet":
        return LOAD_NNUNET.replace("INPUT_CHANNELS", str(meta["kwargs"]["input_channels"])).replace(
            "CLASSES", "".join(f"    {json.dumps(n)},\n" for n in names)
        )
    modules = sorted({n.rsplit(".", 1)[0] for n in names})
    classes = "".join(f"    {json.dumps(n)}: {n},\n" for n in names)
    return LOAD_MONAI.replace("IMPORTS", "import " + ", ".join(modules)).replace("CLASSES", classes)


def write_model_card(out: Path, meta: dict, export_format: str, adapter) -> None:
    """adapter: the backbone's (`models/adapters/`), whose notes (class token, other homes) end the card."""
    snippet = loading_snippet(meta, export_format)
    model = meta["config"]["model"]
    chain = monai_chain(meta)
    lines = [
        *front_matter(meta, export_format),
        f"# voxfm {meta.get('architecture', '')} backbone — {meta['objective']}, step {meta['step']}",
        "",
        "## Data",
        f"- modalities (volumes): {meta['pretraining_modalities']}",
        f"- datasets (volumes): {meta['pretraining_datasets']}",
        f"- steps: {meta['step']}; objective: `{meta['config']['objective']['loss']['_target_']}`; "
        f"model: `{model['_target_']}`",
        "",
        "## Preprocessing — feed the network exactly this",
        f"- spacing: {meta['spacing']} mm; orientation: {meta['orientation']}",
        f"- axis order of the tensor: {meta['axis_order']}",
        "- intensity per modality, mapped to [0, 1]:",
        *_normalisation_lines(meta["normalisation"]),
        *(['- with MONAI: the transforms under "Preprocessing with MONAI" below'] if chain else []),
        "",
        "## Intended use",
        "Initialisation for 3D segmentation and other dense tasks on CT/MR/PET at the spacing above, by fine-tuning.",
        "Not a diagnostic device; not validated for clinical use.",
        "",
        "## Loading",
        "```python",
        snippet,
        "```",
        *(["", "## Preprocessing with MONAI", "```python", chain, "```"] if chain else []),
        "",
        *(continue_command(meta) if export_format == "full" else []),
        "",
        f"voxfm {meta.get('voxfm_version')} (git {meta.get('git_revision') or 'unknown'}); the run's whole config is "
        "in backbone.json.",
    ]
    if export_format == "nnunet":
        lines += [
            "",
            "## Fine-tuning with nnU-Net v2",
            NNUNET_STEPS,
            "",
            "These weights are in nnU-Net's axis order ([C, Z, Y, X] of the RAS image): kernels were "
            "transposed at export, so nnU-Net's network computes voxfm's features. nnU-Net normalises CT with "
            "dataset percentiles and a z-score instead of the window above; the instance norm after the first "
            "convolution makes the network insensitive to such an affine intensity change, apart from clipping.",
        ]
    if export_format == "nnssl":
        name = meta["nnssl_architecture"]["arch_class_name"]
        trainer = adapter.nnssl_trainer
        spacing = meta["spacing"][::-1] if meta["spacing"] else None  # like_nnssl names the data by it
        identifier = ("Spacing__" + "_".join(f"{s:.2f}" for s in spacing) if spacing else "<spacing>") + "___Norm__Z"
        lines += [
            "",
            "## Fine-tuning with nnU-Net (`nnUNetv2_train_pretrained`)",
            NNSSL_STEPS.replace("IDENTIFIER", identifier).replace("TRAINER", trainer),
            "",
            f"The adaptation plan names `{name}`. The weights are in nnU-Net's axis order ([C, Z, Y, X] of the "
            "RAS image): kernels were transposed at export (for Primus also its position embeddings and RoPE "
            "blocks reordered), so nnU-Net's network computes voxfm's features.",
        ]
    lines += adapter.card_notes(meta, export_format)
    (out / "README.md").write_text("\n".join(lines) + "\n")
