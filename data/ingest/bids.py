"""A BIDS dataset (https://bids-specification.readthedocs.io) → inputs: `sub-<label>/[ses-<label>/]<datatype>/`
NIfTI files, their modality from the file name's suffix (`_T1w`, `_FLAIR`, `_bold`, `_dwi` → MR, `_pet` → PET,
`_ct` → CT) or else their datatype folder (`anat`, `func`, `dwi`, `fmap`, `perf` → MR; `pet` → PET).

    ds000001/                                  one dataset, named ds000001
      dataset_description.json
      sub-01/anat/sub-01_T1w.nii.gz            MR (bids), subject sub-01
      sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz
      derivatives/seg/sub-01/anat/sub-01_desc-tissue_dseg.nii.gz   the label of sub-01_T1w

`derivatives/` holds processed copies: a segmentation (`_dseg`, `_seg`, `_mask`, `_label`) of a sourced image in
its own space (no `space-` entity, or `space-orig`/`native`/`individual`) becomes that image's label; everything
else there is listed as ignored, never sharded (a preprocessed T1w is a copy of its source).
"""

from __future__ import annotations

from pathlib import Path

from voxfm.data.ingest.inputs import Discovered, InputVolume, stem
from voxfm.data.ingest.modality import from_bids_suffix
from voxfm.data.ingest.volumes import is_nifti
from voxfm.data.ingest.walk import files_under

SEGMENTATION_SUFFIXES = {"dseg", "seg", "mask", "label", "labels"}
LABEL_SUFFIXES = SEGMENTATION_SUFFIXES | {"probseg", "roi", "defacemask"}  # never images
NATIVE_SPACES = {None, "orig", "native", "individual"}
DATATYPE_MODALITY = {"anat": "MR", "func": "MR", "dwi": "MR", "fmap": "MR", "perf": "MR", "pet": "PET", "ct": "CT"}


def parse(path: Path) -> tuple[dict[str, str], str, list[str]]:
    """A BIDS file name → (entities {"sub": "01", ...}, suffix, every other `_` part)."""
    parts = stem(str(path)).split("_")
    entities = dict(p.split("-", 1) for p in parts[:-1] if "-" in p)
    others = [p for p in parts[:-1] if "-" not in p]
    return entities, parts[-1], others


def read_bids(root: Path, name: str, found: Discovered) -> None:
    images: dict[tuple, list[tuple[str, str]]] = {}  # (sub, ses, datatype) → [(path, suffix)]
    labels, derived = [], []
    for p in files_under(root, found):
        rel = p.relative_to(root).parts
        if rel[0] == "derivatives":
            derived.append(p)
            continue
        if not (rel[0].startswith("sub-") and is_nifti(p)):
            found.ignored.append(str(p))  # sidecars, participants.tsv, sourcedata/, code/ ...
            continue
        entities, suffix, _ = parse(p)
        if suffix in LABEL_SUFFIXES:
            labels.append(p)
            continue
        modality = from_bids_suffix(suffix) or DATATYPE_MODALITY.get(p.parent.name)
        subject = "sub-" + entities.get("sub", rel[0][4:])
        found.add(
            InputVolume(
                path=str(p),
                modality=modality,
                modality_source="bids" if modality else None,
                dataset=name,
                subject=subject,
                layout="bids",
            )
        )
        images.setdefault((entities.get("sub"), entities.get("ses"), p.parent.name), []).append((str(p), suffix))
    by_name = {str(Path(path).with_name(stem(path))): path for group in images.values() for path, _ in group}
    for p in labels:  # a label map among the raw files: its image is the same name without the label suffix
        match = by_name.get(str(p.parent / stem(str(p)).rsplit("_", 1)[0]))
        if match is not None:
            found.pair(match, str(p))  # a second label map of one image is rejected
        else:
            found.reject(str(p), "label map, not an image: a BIDS mask or segmentation without its image")
    for p in derived:
        match = _source_of(p, images) if is_nifti(p) else None
        if match is not None:
            found.pair(match, str(p))
        else:
            found.ignored.append(str(p))


def _source_of(derivative: Path, images: dict[tuple, list[tuple[str, str]]]) -> str | None:
    """The raw image a derivative segments, or None: same subject, session and datatype, in the image's own space,
    and named after the image's suffix (`space-T1w`, `_T1w_`) where the folder holds several."""
    entities, suffix, others = parse(derivative)
    candidates = images.get((entities.get("sub"), entities.get("ses"), derivative.parent.name), [])
    space = entities.get("space")
    if suffix not in SEGMENTATION_SUFFIXES or (space not in NATIVE_SPACES and space not in {s for _, s in candidates}):
        return None  # not a segmentation, or one in another space (a template's: MNI152...)
    named = [path for path, s in candidates if s in others or s == space]
    if len(named) == 1:
        return named[0]
    return candidates[0][0] if len(candidates) == 1 else None
