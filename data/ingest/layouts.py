"""Which datasets a folder holds, read by their own layout: nnU-Net v2 raw and the Medical Segmentation Decathlon
(`data/ingest/nnunet.py`), BIDS (`data/ingest/bids.py`), and plain folders (`data/ingest/plain.py`).

A folder is a dataset of a layout when it looks like one (`detect`); any other folder is searched for datasets,
its own files read as a plain dataset. So `$nnUNet_raw` is as many datasets as it holds, each named after its own
folder (`Dataset001_Liver`), never after an inner one (`imagesTr`, `anat`). Label maps are paired with their
image and never become images: one without its image is rejected as `label map, not an image`.

    Dataset001_Liver/              Task03_Liver/                  ds000001/             plain/
      dataset.json (channel_names)   dataset.json (modality)        dataset_description   scan1.nii.gz
      imagesTr/liver_001_0000.nii.gz imagesTr/liver_3.nii.gz (3D/4D) sub-01/anat/          scan1_seg.nii.gz
      imagesTs/liver_100_0000.nii.gz labelsTr/liver_3.nii.gz            sub-01_T1w.nii.gz   dicom/...
      labelsTr/liver_001.nii.gz                                     derivatives/...
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from voxfm.data.ingest.inputs import Discovered, read_manifest
from voxfm.data.ingest.nnunet import IMAGE_FOLDERS, MSD_NAME, NNUNET_NAME, read_nnunet
from voxfm.data.ingest.plain import read_plain

LAYOUTS = ("auto", "nnunet", "msd", "bids", "plain")
CHANNELS = ("separate", "first")  # a case's channels _0000, _0001, ...: one sample each, or only the first
BIDS_DATATYPES = {"anat", "func", "dwi", "fmap", "perf", "pet", "ct"}


def discover(input_: str, layout: str = "auto", channels: str = "separate", output: str | None = None) -> Discovered:
    """A folder (searched recursively, read by its layout) or a .csv manifest → inputs, rejected, ignored files.
    `output`: the shard set's folder, never read as input where it lies inside the input."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; allowed: {', '.join(LAYOUTS)}")
    if channels not in CHANNELS:
        raise ValueError(f"channels={channels!r}; allowed: {', '.join(CHANNELS)}")
    path = Path(input_)
    root = path.resolve().parent if path.suffix == ".csv" else path.resolve()
    found = Discovered([], [], [], root=str(root), channels=channels)
    found.output = os.path.realpath(output) if output else ""
    found.walked[str(root)] = str(root)
    try:
        if path.is_file() and path.suffix == ".csv":
            read_manifest(path, found)
        elif path.is_dir():
            scan(root, found, layout)
        else:
            raise ValueError(f"input={input_}: expected a folder (NIfTI files, DICOM series) or a manifest .csv")
    except OSError as err:  # an OSError that reaches `voxfm shard` means its output could not be written
        raise ValueError(f"input={input_}: cannot be read: {err}") from err
    if not (found.nifti or found.dicom_files or found.rejected):
        raise ValueError(
            f"input={input_}: no NIfTI file (.nii, .nii.gz) or DICOM file found"
            + (f" ({len(found.ignored)} other file(s))" if found.ignored else "")
        )
    return found


def detect(folder: Path, forced: str | None = None) -> str | None:
    """The layout `folder` is a dataset of, or None (a plain folder, or a collection of datasets). `forced`: read
    any folder shaped as that layout's datasets are (images folders; sub-* folders) as one."""
    has_images = any((folder / name).is_dir() for name in IMAGE_FOLDERS)
    subjects = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("sub-")]
    if forced in ("nnunet", "msd"):
        return forced if has_images else None
    if forced == "bids":
        return forced if subjects or (folder / "dataset_description.json").is_file() else None
    meta = read_dataset_json(folder)[0] if (folder / "dataset.json").is_file() else {}
    if has_images and ("channel_names" in meta or NNUNET_NAME.fullmatch(folder.name)):
        return "nnunet"
    if has_images and ("modality" in meta or MSD_NAME.fullmatch(folder.name)):
        return "msd"
    if (folder / "dataset_description.json").is_file() or any(_has_datatypes(p) for p in subjects):
        return "bids"
    return "nnunet" if has_images else None  # imagesTr/labelsTr without a dataset.json still pair by case


def _has_datatypes(subject: Path) -> bool:
    """sub-01/anat/, sub-01/ses-1/func/, ...: a BIDS subject, not any folder whose name starts with sub-. A folder
    that cannot be listed tells nothing here (the walk rejects it with its reason)."""
    try:
        folders = [p for p in subject.iterdir() if p.is_dir()]
        return any(p.name in BIDS_DATATYPES for p in folders) or any(
            p.name.startswith("ses-") and any(q.is_dir() and q.name in BIDS_DATATYPES for q in p.iterdir())
            for p in folders
        )
    except OSError:
        return False


def read_dataset_json(folder: Path) -> tuple[dict, str | None]:
    """(dataset.json as a dict, or {} with the reason it cannot be used)."""
    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError) as err:
        return {}, f"{type(err).__name__}: {err}"
    return (meta, None) if isinstance(meta, dict) else ({}, f"a JSON {type(meta).__name__}, not an object")


def scan(root: Path, found: Discovered, layout: str) -> None:
    """Every dataset under `root` into `found`: inputs, rejected label maps, ignored files. A forced `layout`
    that matches no folder is an error, not an empty shard set."""
    forced = None if layout in ("auto", "plain") else layout

    def kind_of(folder: Path) -> str | None:
        return None if layout == "plain" else detect(folder, forced)

    def read(folder: Path, kind: str) -> None:
        name = found.dataset(folder if folder.name not in IMAGE_FOLDERS else folder.parent, kind)
        if kind == "bids":
            from voxfm.data.ingest.bids import read_bids

            read_bids(folder, name, found)
        else:
            meta, problem = read_dataset_json(folder) if (folder / "dataset.json").is_file() else ({}, None)
            if problem:
                found.notes.append(f"{name}/dataset.json cannot be used ({problem}): modalities from intensities")
            read_nnunet(folder, name, kind, meta, found)

    read_plain(root, found, kind_of, read)
    if forced and forced not in found.datasets.values():
        raise ValueError(
            f"layout={layout}: input={root} holds no {layout} dataset "
            f"({'a folder with imagesTr/ or imagesTs/' if forced != 'bids' else 'a folder with sub-*/ folders'}); "
            "layout=auto reads each dataset by the layout it has"
        )
