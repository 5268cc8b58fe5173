"""An nnU-Net v2 raw dataset or a Medical Segmentation Decathlon task (nnU-Net v1's Task folders alike) → inputs.

    Dataset002_Prostate/                   Task05_Prostate/
      dataset.json  channel_names {"0": "T2", "1": "ADC"}   dataset.json  modality {"0": "T2", "1": "ADC"}
      imagesTr/prostate_00_0000.nii.gz     imagesTr/prostate_00.nii.gz    (4D: one volume per channel)
      imagesTr/prostate_00_0001.nii.gz     labelsTr/prostate_00.nii.gz
      labelsTr/prostate_00.nii.gz

Each channel is an input of its own (`channels=separate`), its modality named by dataset.json, paired with its
case's label map; `channels=first` keeps channel 0 and lists the others as ignored. A name ending in four digits
is read as `<case>_<channel>` only where the layout says so (the label maps name the case without them, or the
numbers are dataset.json's channels): AMOS's `amos_0001.nii.gz` is case amos_0001.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from voxfm.data.ingest.inputs import Discovered, InputVolume, stem
from voxfm.data.ingest.modality import from_name
from voxfm.data.ingest.volumes import is_nifti, n_frames
from voxfm.data.ingest.walk import files_under

NNUNET_NAME = re.compile(r"Dataset\d{3}_.+")
MSD_NAME = re.compile(r"Task\d{2,3}_.+")
CHANNEL = re.compile(r"(.+)_(\d{4})")  # nnU-Net's <case>_<channel> file names
IMAGE_FOLDERS = {"imagesTr": "labelsTr", "imagesTs": "labelsTs", "imagesVal": "labelsVal"}
NOT_A_LABEL = "label map, not an image"


def read_nnunet(folder: Path, name: str, kind: str, meta: dict, found: Discovered) -> None:
    """One input per channel file (or per channel of a 4D file), labels by case; NIfTI files outside the images
    and labels folders are rejected (the layout does not say what they are), other files listed as ignored."""
    names = meta.get("channel_names") or meta.get("modality") or {}
    names = {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}
    known = set(IMAGE_FOLDERS) | set(IMAGE_FOLDERS.values())
    by_folder: dict[str, list[Path]] = {}  # imagesTr, labelsTr ... → the files under it
    for p in files_under(folder, found):
        top = p.relative_to(folder).parts
        if len(top) > 1 and top[0] in known:
            by_folder.setdefault(top[0], []).append(p)
        elif is_nifti(p):
            where = f"not in imagesTr/, imagesTs/ or labelsTr/ of {name}"
            found.reject(str(p), f"{where}: the layout does not say what it is (move it, or list it in a manifest)")
        elif p != folder / "dataset.json":
            found.ignored.append(str(p))
    for images_name, labels_name in IMAGE_FOLDERS.items():
        images, labels = _nifti(by_folder.get(images_name, []), found), _nifti(by_folder.get(labels_name, []), found)
        channelled = _channelled([stem(str(p)) for p in images], {stem(str(p)) for p in labels}, names)
        cases: dict[str, list[InputVolume]] = {}
        for p in images:
            match = CHANNEL.fullmatch(stem(str(p))) if channelled else None
            case, channel = (match.group(1), int(match.group(2))) if match else (stem(str(p)), None)
            for vol in _channels(p, case, channel, name, kind, names, found):
                cases.setdefault(case, []).append(vol)
        _pair_cases(labels, labels_name, cases, found)


def _nifti(files: list[Path], found: Discovered) -> list[Path]:
    """The NIfTI files of `files` (others: ignored)."""
    found.ignored += [str(p) for p in files if not is_nifti(p)]
    return [p for p in files if is_nifti(p)]


def _channelled(stems: list[str], labels: set[str], names: dict) -> bool:
    """Whether these image names end in a channel number: the label maps name cases without it, or (no labels to
    tell) every number is one of dataset.json's channels (channel 0 alone without a dataset.json)."""
    matches = [CHANNEL.fullmatch(s) for s in stems]
    if not stems or not all(matches):
        return False
    by_case = sum(m.group(1) in labels for m in matches)
    by_name = sum(s in labels for s in stems)
    if by_case or by_name:
        return by_case > by_name
    channels = {int(m.group(2)) for m in matches}
    return max(channels) < len(names) if names else channels == {0}


def _channels(p: Path, case: str, channel: int | None, dataset: str, kind: str, names: dict, found: Discovered):
    """The inputs of one image file: itself (a 3D channel file), or one per channel of a 4D Decathlon file."""
    base = InputVolume(path=str(p), dataset=dataset, subject=case, layout=kind)
    if channel is not None:
        if found.channels == "first" and channel != 0:
            found.ignored.append(str(p))  # channels=first: listed, not sharded
            return []
        return [_with_modality(base, names.get(str(channel)), None)]
    count = n_frames(p) if len(names) > 1 else 1  # a 4D file of a one-channel dataset is a time series
    if count == 1:
        return [_with_modality(base, names.get("0"), None)]
    return [_with_modality(base, names.get(str(c)), c) for c in range(1 if found.channels == "first" else count)]


def _with_modality(vol: InputVolume, name: str | None, frame: int | None) -> InputVolume:
    modality = from_name(name) if name else None
    return replace(vol, modality=modality, modality_source="dataset.json" if modality else None, frame=frame)


def _pair_cases(labels: list[Path], folder: str, cases: dict[str, list[InputVolume]], found: Discovered) -> None:
    """labelsTr/<case>.nii.gz → every input of that case; a label without a case is rejected."""
    for vols in cases.values():
        for vol in vols:
            found.add(vol)
    for p in labels:
        if stem(str(p)) in cases:
            for vol in cases[stem(str(p))]:
                found.pair(vol.path, str(p), frame=vol.frame)
        else:
            found.reject(str(p), f"{NOT_A_LABEL}: {folder}/ holds it, and no image of case {stem(str(p))}")
