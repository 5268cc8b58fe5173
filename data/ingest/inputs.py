"""What `voxfm shard` is given, as inputs (NIfTI files and DICOM series) + rejected and ignored files: a manifest.csv
read here, a folder read by its layout (`data/ingest/layouts.py`).

An input is one NIfTI file (or one channel of a 4D one) or one DICOM series (all files of a SeriesInstanceUID,
wherever they lie).
Every other file of a folder is listed as ignored, never silently dropped (`data/ingest/walk.py`). Content hashes
identify inputs across reruns (resume) and within a run (duplicates); a file's identity (size, mtime, inode) is taken
with its hash and checked again once its voxels are read, so an input is never sharded under another content's hash.

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
from dataclasses import dataclass, field, replace
from pathlib import Path

from voxfm.data.ingest.dicom import is_dicom, read_header
from voxfm.data.ingest.preprocess import MODALITIES
from voxfm.data.ingest.volumes import RejectedVolume
from voxfm.data.ingest.walk import enter, files_under, relative, within

Stamp = tuple[int, int, int, int]  # a file's identity: size, mtime_ns, inode, device
CHANGED = "changed while being read"

MANIFEST_COLUMNS = ("path", "modality", "dataset", "subject", "label")
DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "PT": "PET"}


@dataclass(frozen=True)
class InputVolume:
    path: str  # the NIfTI file, or the folder that holds a DICOM series
    modality: str | None = None  # None: decided from intensities when it is sharded
    dataset: str = ""
    subject: str = ""
    label: str | None = None
    files: tuple[str, ...] = ()  # a DICOM series' files (empty for NIfTI)
    series_uid: str | None = None
    root: str = ""  # the input root: recorded paths are relative to it
    modality_source: str | None = None  # which evidence gave `modality` (voxfm.data.ingest.modality.SOURCES)
    frame: int | None = None  # one channel of a 4D file (a Decathlon image): its index
    layout: str = "plain"  # the layout its dataset was read as (voxfm.data.ingest.layouts.LAYOUTS)
    stamps: tuple[tuple[str, Stamp], ...] = ()  # (file, its identity when hashed): checked again once read


@dataclass
class Discovered:
    """What the input holds: NIfTI inputs, DICOM files (grouped into series after their headers are read),
    rejected files with reasons (label maps without their image), ignored files, and the datasets found."""

    nifti: list[InputVolume]
    dicom_files: list[tuple[str, InputVolume]]  # (file, template carrying the manifest row's fields)
    ignored: list[str]
    root: str = ""
    channels: str = "separate"
    rejected: list[dict] = field(default_factory=list)
    datasets: dict[str, str] = field(default_factory=dict)  # name → layout
    notes: list[str] = field(default_factory=list)  # what the run should say once (a damaged dataset.json ...)
    folders: dict[str, str] = field(default_factory=dict)  # dataset name → its folder: two folders, two names
    walked: dict[str, str] = field(default_factory=dict)  # real path of each folder read → the path it was read at
    output: str = ""  # the real path of the output folder: never read as input
    _where: dict = field(default_factory=dict)  # (path, frame) → index in `nifti`, for pairing labels

    def dataset(self, folder: Path, layout: str) -> str:
        """The name of the dataset in `folder`: its folder's name, or its path under the input root where another
        folder of that name is a dataset too (two `rawdata/` BIDS roots stay two datasets)."""
        name = folder.name
        if self.folders.get(name, str(folder)) != str(folder):
            name = relative(str(folder), self.root) or name
        self.folders.setdefault(name, str(folder))
        self.datasets.setdefault(name, layout)
        return name

    def add(self, vol: InputVolume) -> None:
        self._where[(vol.path, vol.frame)] = len(self.nifti)
        self.nifti.append(replace(vol, root=self.root))

    def pair(self, image: str, label: str, frame: int | None = None) -> None:
        """`label` is the label map of input `image` (of its channel `frame`); a second one is rejected."""
        i = self._where[(image, frame)]
        if self.nifti[i].label not in (None, label):
            kept, image = relative(self.nifti[i].label, self.root), relative(image, self.root)
            self.reject(label, f"label map, not an image: a second label map of {image} ({kept} is kept)")
        else:
            self.nifti[i] = replace(self.nifti[i], label=label)

    def reject(self, path: str, reason: str) -> None:
        self.rejected.append({"path": path, "reason": reason})


def strip_root(text: str, root: str, *paths: str | None) -> str:
    """A rejection reason or note (which may quote an error naming a file) as a shard set records it: each of
    `paths` (an input, its label; an error may quote them, or what a link of theirs points to outside the root) by
    its recorded name, then the input root's absolute path dropped."""
    for path in (p for p in paths if p):
        forms = {path, os.path.realpath(path)} - {root}
        for form in sorted(forms, key=len, reverse=True):
            if not (root and within(form, root)):
                text = text.replace(form, relative(path, root))
    return text.replace(root.rstrip("/") + "/", "") if root else text


def pseudonym(subject: str, salt: str) -> str:
    """A subject identifier → 16 hex digits of HMAC-SHA256 keyed by the shard set's salt: the same subject
    gives the same pseudonym within a shard set (and when it is extended), nothing readable."""
    # surrogateescape: a file name that is not UTF-8 (as Linux allows) still names its subject
    return hmac.new(salt.encode(), subject.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]


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


def _scan_dicom_folder(folder: Path, template: InputVolume, found: Discovered) -> None:
    """A manifest row naming a folder: its DICOM files are the row's series; every other file is ignored. Its links
    are followed within the input root, or within the folder itself where it lies outside the root."""
    real = os.path.realpath(folder)
    if not enter(folder, found):
        return
    for p in files_under(folder, found, bound=found.root if within(real, found.root) else real):
        if is_dicom(p):
            found.dicom_files.append((str(p), template))
        else:
            found.ignored.append(str(p))


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

    def resolve(p: str) -> str:  # not through links: a row's path is recorded as written, never a link's target
        return os.path.normpath(os.path.join(found.root, p))

    for i, row in enumerate(rows, start=2):
        src = resolve(row["path"].strip())
        label = (row.get("label") or "").strip()
        modality = _modality(row.get("modality") or "", f"input={path} line {i}")
        vol = InputVolume(
            path=src,
            modality=modality,
            modality_source="manifest" if modality else None,
            dataset=(row.get("dataset") or "").strip() or path.stem,
            subject=(row.get("subject") or "").strip() or stem(src),
            label=resolve(label) if label else None,
            root=found.root,
        )
        if Path(src).is_dir():
            _scan_dicom_folder(Path(src), vol, found)
        else:
            found.add(vol)


def stamp_of(st: os.stat_result) -> Stamp:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def hash_file(path: str) -> tuple[str, Stamp]:
    """(sha256 of the bytes read, the identity of the file they came from); `RejectedVolume` if it was written to
    while being hashed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        before = stamp_of(os.fstat(f.fileno()))
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        if stamp_of(os.fstat(f.fileno())) != before:
            raise RejectedVolume(f"{CHANGED}: written to while it was hashed")
    return h.hexdigest(), before


def file_hash(path: str) -> str:
    return hash_file(path)[0]


def check_unchanged(vol: InputVolume) -> None:
    """After `vol` is read: each of its files is still the one hashed (not replaced, not written to since), so the
    voxels read are the content its hash names; else `RejectedVolume`, and a rerun shards what it holds by then."""
    for path, stamp in vol.stamps:
        try:
            now = stamp_of(os.stat(path))
        except OSError:
            now = None
        if now != stamp:
            what = f" ({Path(path).name})" if vol.files else ""
            raise RejectedVolume(f"{CHANGED}: replaced or written to after it was hashed{what}; rerun to shard it")


def scan_dicom_file(path: str) -> tuple[dict | None, str, Stamp | None, str | None]:
    """(header keys or None, content hash, identity, rejection reason or None) of one DICOM file: runs in the pool."""
    try:
        header = read_header(path)
        return (header, *hash_file(path), None)
    except RejectedVolume as err:
        return None, "", None, str(err)
    except OSError as err:
        return None, "", None, f"unreadable: {err}"
    except Exception as err:  # one damaged file never stops the scan
        return None, "", None, f"unreadable DICOM: {type(err).__name__}: {err}"


def group_series(
    scanned: list[tuple[str, InputVolume, dict, str]],
) -> tuple[list[tuple[InputVolume, str]], list[str], list[dict]]:
    """(file, template, header, hash) of image files → one input per series with its hash (of its files' sorted
    hashes: names and order do not matter), the DICOM files that hold no image (reports, structure sets), and the
    segmentation objects (Modality SEG: label maps, never images) rejected."""
    series: dict[str, list] = {}
    no_image, rejected = [], []
    for file, template, header, digest in scanned:
        if not header["has_pixels"]:
            no_image.append(file)
        elif header["modality"] == "SEG":
            rejected.append({"path": file, "reason": "label map, not an image: a DICOM segmentation (Modality SEG)"})
        else:
            series.setdefault(header["series"], []).append((file, template, header, digest))
    inputs = []
    for uid, members in series.items():
        files = sorted(m[0] for m in members)
        template, header = members[0][1], members[0][2]
        folder = os.path.commonpath(files) if len(files) > 1 else str(Path(files[0]).parent)
        subject = template.subject or header["subject"] or Path(folder).name
        tagged = DICOM_MODALITIES.get(header["modality"])
        vol = replace(
            template,
            path=folder,
            files=tuple(files),
            series_uid=uid,
            subject=subject,
            dataset=template.dataset or Path(folder).name,
            modality=template.modality or tagged,
            modality_source=template.modality_source or ("dicom" if tagged else None),
        )
        inputs.append((vol, hashlib.sha256("".join(sorted(m[3] for m in members)).encode()).hexdigest()))
    return sorted(inputs, key=lambda iv: (iv[0].path, iv[0].series_uid or "")), no_image, rejected


def sample_key(vol: InputVolume, digest: str) -> str:
    """WebDataset keys may not contain dots; the content hash keeps a subject's volumes apart. `vol.subject` is
    its pseudonym by then (ingest replaces it), so a key never carries a PatientID or file name."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{vol.dataset}_{vol.subject}")
    return f"{name}_{digest[:12]}"
