"""The README.md every export carries: what the weights saw, how to feed them, how to load them.

The loading snippet is the first ```python block; tests run it verbatim inside the export folder.
"""

from __future__ import annotations

import json
from pathlib import Path

LOAD_MONAI = """import json, pydoc, safetensors.torch
meta = json.load(open("backbone.json"))
kwargs = {k: pydoc.locate(v) if v and k in meta["kwargs_requires_import"] else v for k, v in meta["kwargs"].items()}
net = pydoc.locate(meta["class"])(**kwargs)
net.load_state_dict(safetensors.torch.load_file("backbone.safetensors"), strict=True)"""

LOAD_NNUNET = """import json
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
arch = json.load(open("nnunet_plans_fragment.json"))["plans"]["configurations"]["3d_fullres_voxfm"]["architecture"]
net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                             input_channels=INPUT_CHANNELS, output_channels=3, deep_supervision=True)
load_pretrained_weights(net, "nnunet_pretrained.pth")  # every key but the segmentation layers, shapes checked"""

LOAD_FULL = """import json, safetensors.torch
meta = json.load(open("full.json"))  # config, step, data
state = safetensors.torch.load_file("model.safetensors")  # backbone.* and the objective's heads
# continue pretraining on new data, fresh optimiser, from meta["step"]:
#   voxfm pretrain experiment=<same experiment> init_from=<this folder> data.shards=<new shards> run_dir=<new run>"""

NNUNET_STEPS = """1. Add `"overwrite_image_reader_writer": "NibabelIOWithReorient"` to your dataset.json (images are
   read in RAS, as in pretraining), then `nnUNetv2_plan_and_preprocess -d <ID> -c 3d_fullres`.
2. Merge `plans.configurations.3d_fullres_voxfm` of `nnunet_plans_fragment.json` into
   `$nnUNet_preprocessed/Dataset<ID>_<name>/nnUNetPlans.json`, then `nnUNetv2_preprocess -d <ID> -c 3d_fullres_voxfm`.
3. `nnUNetv2_train <ID> 3d_fullres_voxfm <fold> -pretrained_weights nnunet_pretrained.pth`"""


def _normalisation_lines(norm: dict | None) -> list[str]:
    if not norm:
        return ["  - not recorded (checkpoint without shard-set metadata)"]
    return [f"  - {m}: {json.dumps({k: v for k, v in n.items() if k != 'note'})} — {n.get('note', '')}"
            for m, n in norm.items()]


def write_model_card(out: Path, meta: dict, format: str) -> None:
    snippet = {"monai": LOAD_MONAI, "nnunet": LOAD_NNUNET, "full": LOAD_FULL}[format]
    if format == "nnunet":
        snippet = snippet.replace("INPUT_CHANNELS", str(meta["kwargs"]["input_channels"]))
    model = meta["config"]["model"]
    lines = [
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
        "",
        "## Intended use",
        "Initialisation for 3D segmentation and other dense tasks on CT/MR/PET at the spacing above, by fine-tuning.",
        "Not a diagnostic device; not validated for clinical use.",
        "",
        "## Loading",
        "```python",
        snippet,
        "```",
    ]
    if format == "nnunet":
        lines += ["", "## Fine-tuning with nnU-Net v2", NNUNET_STEPS, "",
                  "These weights are in nnU-Net's axis order ([C, Z, Y, X] of the RAS image): kernels were "
                  "transposed at export, so nnU-Net's network computes voxfm's features. nnU-Net normalises CT with "
                  "dataset percentiles and a z-score instead of the window above; the instance norm after the first "
                  "convolution makes the network insensitive to such an affine intensity change, apart from clipping."]
    (out / "README.md").write_text("\n".join(lines) + "\n")
