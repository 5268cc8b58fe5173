"""What `voxfm shard` is given: a folder or a manifest.csv → inputs (NIfTI files and DICOM series) + ignored files.

An input is one NIfTI file or one DICOM series (all files of a SeriesInstanceUID, wherever they lie).
Every other file of a folder is listed as ignored, never silently dropped. Content hashes identify
inputs across reruns (resume) and within a run (duplicates).

A shard set is made to be shared, so what it records is pseudonymous: a subject is a salted hash of its
identifier (manifest column, DICOM PatientID or file name; `pseudonym`), and a source path is relative to
the input root (`relative`): the input folder, or the manifest's folder.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from voxfm.data.ingest.dicom import is_dicom, read_header
from voxfm.data.ingest.preprocess import MODALITIES
from voxfm.data.ingest.volumes import RejectedVolume, is_nifti

MANIFEST_COLUMNS = ("path", "modality", "dataset", "subject", "label")
DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "PT": "PET"}


@dataclass(frozen=True)
class InputVolume:
    path: str  # the NIfTI file, or the folder that holds a DICOM series
    modality: str | None = None  # None: inferred from intensities
    dataset: str = ""
    subject: str = ""
    label: str | None = None
    files: tuple[str, ...] = ()  # a DICOM series' files (empty for NIfTI)
    series_uid: str | None = None
    root: str = ""  # the input root: recorded paths are relative to it


@dataclass
class Discovered:
    nifti: list[InputVolume]
    dicom_files: list[tuple[str, InputVolume]]  # (file, template carrying the manifest row's fields)
    ignored: list[str]
    root: str = ""


def relative(path: str, root: str) -> str:
    """`path` as recorded in a shard set: relative to the input root; a path outside it (a manifest row
    pointing elsewhere) by its name only, so no absolute path (user names, site folders) is ever stored."""
    p = Path(path)
    try:
        return p.relative_to(root).as_posix() if root else p.name
    except ValueError:
        return p.name


def pseudonym(subject: str, salt: str) -> str:
    """A subject identifier → 16 hex digits of HMAC-SHA256 keyed by the shard set's salt: the same subject
    gives the same pseudonym within a shard set (and when it is extended), nothing readable."""
    return hmac.new(salt.encode(), subject.encode(), hashlib.sha256).hexdigest()[:16]


def stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _modality(value: str, where: str) -> str | None:
    modality = value.strip().upper() or None
    modality = "MR" if modality == "MRI" else modality
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"{where}: modality={modality!r}; allowed: {list(MODALITIES)}")
    return modality


def _scan_folder(folder: Path, template: InputVolume | None, found: Discovered) -> None:
    for p in sorted(p for p in folder.rglob("*") if p.is_file()):
        if is_nifti(p) and template is None:
            found.nifti.append(
                InputVolume(path=str(p.resolve()), dataset=p.parent.name, subject=stem(str(p)), root=found.root)
            )
        elif is_dicom(p):
            found.dicom_files.append(
                (str(p.resolve()), template or InputVolume(path="", dataset=folder.name, root=found.root))
            )
        else:
            found.ignored.append(str(p.resolve()))


def read_manifest(path: Path, found: Discovered) -> None:
    """CSV with a `path` column (a NIfTI file, or a folder of DICOM files) and optional modality, dataset,
    subject, label; relative paths are relative to the manifest."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        optional = ", ".join(MANIFEST_COLUMNS[1:])
        raise ValueError(f"input={path}: a manifest needs a header with a `path` column (optional: {optional})")
    unknown = set(rows[0]) - set(MANIFEST_COLUMNS)
    if unknown:
        raise ValueError(f"input={path}: unknown manifest columns {sorted(unknown)}; allowed: {list(MANIFEST_COLUMNS)}")

    def resolve(p: str) -> str:
        return str(p if Path(p).is_absolute() else (path.parent / p).resolve())

    for i, row in enumerate(rows, start=2):
        src = resolve(row["path"].strip())
        label = (row.get("label") or "").strip()
        vol = InputVolume(
            path=src,
            modality=_modality(row.get("modality") or "", f"input={path} line {i}"),
            dataset=(row.get("dataset") or "").strip() or path.stem,
            subject=(row.get("subject") or "").strip() or stem(src),
            label=resolve(label) if label else None,
            root=found.root,
        )
        if Path(src).is_dir():
            _scan_folder(Path(src), vol, found)
        else:
            found.nifti.append(vol)


def discover(input_: str) -> Discovered:
    """A folder (searched recursively) or a .csv manifest → NIfTI inputs, DICOM files, ignored files."""
    path = Path(input_)
    found = Discovered([], [], [], root=str(path.resolve().parent if path.suffix == ".csv" else path.resolve()))
    try:
        if path.is_file() and path.suffix == ".csv":
            read_manifest(path, found)
        elif path.is_dir():
            _scan_folder(path, None, found)
        else:
            raise ValueError(f"input={input_}: expected a folder (NIfTI files, DICOM series) or a manifest .csv")
    except OSError as err:  # an OSError that reaches `voxfm shard` means its output could not be written
        raise ValueError(f"input={input_}: cannot be read: {err}") from err
    return found


def file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def scan_dicom_file(path: str) -> tuple[dict | None, str, str | None]:
    """(header keys or None, content hash, rejection reason or None) of one DICOM file: runs in the pool."""
    try:
        return read_header(path), file_hash(path), None
    except RejectedVolume as err:
        return None, "", str(err)
    except OSError as err:
        return None, "", f"unreadable: {err}"
    except Exception as err:  # one damaged file never stops the scan
        return None, "", f"unreadable DICOM: {type(err).__name__}: {err}"


def group_series(scanned: list[tuple[str, InputVolume, dict, str]]) -> tuple[list[tuple[InputVolume, str]], list[str]]:
    """(file, template, header, hash) of image files → one input per series with its hash (of its files' sorted
    hashes: names and order do not matter), and the DICOM files that hold no image (reports, structure sets)."""
    series: dict[str, list] = {}
    no_image = []
    for file, template, header, digest in scanned:
        if not header["has_pixels"]:
            no_image.append(file)
            continue
        series.setdefault(header["series"], []).append((file, template, header, digest))
    inputs = []
    for uid, members in series.items():
        files = sorted(m[0] for m in members)
        template, header = members[0][1], members[0][2]
        folder = os.path.commonpath(files) if len(files) > 1 else str(Path(files[0]).parent)
        subject = template.subject or header["subject"] or Path(folder).name
        vol = replace(
            template,
            path=folder,
            files=tuple(files),
            series_uid=uid,
            subject=subject,
            dataset=template.dataset or Path(folder).name,
            modality=template.modality or DICOM_MODALITIES.get(header["modality"]),
        )
        inputs.append((vol, hashlib.sha256("".join(sorted(m[3] for m in members)).encode()).hexdigest()))
    return sorted(inputs, key=lambda iv: (iv[0].path, iv[0].series_uid or "")), no_image


def sample_key(vol: InputVolume, digest: str) -> str:
    """WebDataset keys may not contain dots; the content hash keeps a subject's volumes apart. `vol.subject` is
    its pseudonym by then (ingest replaces it), so a key never carries a PatientID or file name."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{vol.dataset}_{vol.subject}")
    return f"{name}_{digest[:12]}"
