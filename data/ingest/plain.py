"""The walk of an input folder, and the plain folders in it: datasets of known layouts are handed to their readers,
the rest read as plain datasets (what the walk does with links, unreadable folders and the output folder:
`data/ingest/walk.py`).

A plain folder is one dataset, named after it (after its parent where its own name says what files are, as
`images/` does). In a collection (a folder holding datasets of known layouts) each other first-level folder is
one. A file in a sub-folder belongs to the subject that folder names (`pat001/ct.nii.gz`: subject pat001); a file
at the top, to the subject its name gives. Label maps pair with their image by name:

    study/x.nii.gz + study/x_seg.nii.gz (or _dseg, _mask, _label)   study/pat1/ct.nii.gz + study/pat1/mask.nii.gz
    study/images/x.nii.gz + study/labels/x.nii.gz                   study/images/p1/x.nii.gz + study/labels/p1/x.nii.gz
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from voxfm.data.ingest.dicom import is_dicom
from voxfm.data.ingest.inputs import Discovered, InputVolume, stem
from voxfm.data.ingest.modality import LABEL_SUFFIXES
from voxfm.data.ingest.nnunet import IMAGE_FOLDERS, NOT_A_LABEL
from voxfm.data.ingest.volumes import is_nifti
from voxfm.data.ingest.walk import enter, listing, readable

LABEL_FOLDERS = {"labels", "labelsTr", "labelsTs", "labelsVal", "masks", "segmentations", "derivatives"}
LABEL_NAMES = {"label", "labels", "seg", "segmentation", "mask"}  # a file named only so: its folder's image's label
ROLE_FOLDERS = {"images", "anat", *IMAGE_FOLDERS}  # an input root so named: its dataset is its parent's
# folder names that say what files are, not which dataset or subject they belong to
GENERIC = {"images", "image", "nifti", "nii", "dicom", "data", "raw", "scans", "volumes", "anat", *IMAGE_FOLDERS}


def is_label_name(path: Path, root: Path) -> bool:
    """Named or placed as a label map: a `_seg`, `_dseg`, `_mask`, `_label` stem, a file named `mask`, `seg`...,
    or one under labels/, labelsTr/, masks/... (below the input root: the folders above it are the user's)."""
    name = stem(str(path))
    placed = LABEL_FOLDERS & set(path.relative_to(root).parts[:-1])
    return name.endswith(LABEL_SUFFIXES) or name.lower() in LABEL_NAMES or bool(placed)


def read_plain(root: Path, found: Discovered, kind_of: Callable, read: Callable) -> None:
    """Walk `root`: `read(folder, kind)` each dataset `kind_of` recognises, and read every other file as plain."""
    if (kind := kind_of(root)) is not None:
        read(root, kind)
        return
    plain: list[Path] = []  # NIfTI and DICOM files outside any dataset of a known layout
    labels: list[Path] = []

    def walk(entries: list[Path]) -> None:
        for p in entries:
            if not p.is_dir():
                if is_nifti(p) and is_label_name(p, root):
                    labels.append(p)
                elif is_nifti(p) or is_dicom(p):
                    plain.append(p)
                else:
                    found.ignored.append(str(p))
            elif enter(p, found) and readable(p, found):  # before its layout is looked at
                if (kind := kind_of(p)) is not None:
                    read(p, kind)
                else:
                    walk(listing(p, found) or [])

    walk(listing(root, found) or [])
    collection = bool(found.datasets)  # datasets of known layouts were found: each first-level folder is one
    images: dict[Path, list[Path]] = {}  # every plain image, by its path without extension
    for p in plain:
        dataset, subject = _names(p, root, collection, found)
        if is_nifti(p):
            images.setdefault(p.parent / stem(str(p)), []).append(p)
            found.add(InputVolume(path=str(p), dataset=dataset, subject=subject))
        else:
            found.dicom_files.append((str(p), InputVolume(path="", dataset=dataset, root=found.root)))
    for p in labels:  # a label in labels/ pairs with its image in images/
        _pair(p, images, root, found)


def _names(path: Path, root: Path, collection: bool, found: Discovered) -> tuple[str, str]:
    """(dataset, subject) of a plain file (see the module's docstring)."""
    parts = path.relative_to(root).parts[:-1]
    top = parts[0] if collection and parts and parts[0] not in GENERIC | LABEL_FOLDERS else None
    folder = root / top if top else (root.parent if root.name in ROLE_FOLDERS else root)
    dataset = found.dataset(folder, "plain")
    inner = [p for p in (parts[1:] if top else parts) if p not in GENERIC and p not in LABEL_FOLDERS]
    return dataset, inner[0] if inner else stem(str(path))


def _pair(label: Path, images: dict[Path, list[Path]], root: Path, found: Discovered) -> None:
    name = stem(str(label))
    for suffix in sorted(LABEL_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.lower() in LABEL_NAMES:  # `mask.nii.gz`: the one image beside it
        beside = [k for k in images if k.parent == label.parent]
        candidates = beside if len(beside) == 1 else []
    else:
        candidates = [label.parent / name, label.parent.parent / name]
        parts = label.relative_to(root).parts
        for i, part in enumerate(parts[:-1]):  # labels/p1/x → images/p1/x, imagesTr/p1/x, p1/x
            if part in LABEL_FOLDERS:
                for images_folder in ("images", *IMAGE_FOLDERS, None):
                    swapped = [*parts[:i], *([images_folder] if images_folder else []), *parts[i + 1 : -1], name]
                    candidates.append(root.joinpath(*swapped))
    for candidate in candidates:
        if len(images.get(candidate, [])) == 1:
            found.pair(str(images[candidate][0]), str(label))
            return
    found.reject(str(label), f"{NOT_A_LABEL}: no image of this name beside it ({name or 'its folder'})")
