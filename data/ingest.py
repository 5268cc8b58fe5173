"""`voxfm shard`: raw volumes (folder or manifest.csv) → shard set + index.json + report.json."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from data import payload
from data.preprocess import MODALITIES, PreprocessOptions, preprocess
from data.shards import REPORT, ShardSetWriter, load_index, write_json_atomic
from data.volumes import RejectedVolume, is_nifti, load_volume, n_frames

MANIFEST_COLUMNS = ("path", "modality", "dataset", "subject", "label")


@dataclass(frozen=True)
class InputVolume:
    path: str
    modality: str | None = None  # None: inferred from intensities
    dataset: str = ""
    subject: str = ""
    label: str | None = None


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_manifest(path: Path) -> list[InputVolume]:
    """CSV with a `path` column and optional modality, dataset, subject, label; relative paths are
    relative to the manifest."""
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

    volumes = []
    for i, row in enumerate(rows, start=2):
        modality = (row.get("modality") or "").strip().upper() or None
        if modality == "MRI":
            modality = "MR"
        if modality is not None and modality not in MODALITIES:
            raise ValueError(f"input={path} line {i}: modality={modality!r}; allowed: {list(MODALITIES)}")
        src = resolve(row["path"].strip())
        label = (row.get("label") or "").strip()
        volumes.append(InputVolume(
            path=src, modality=modality,
            dataset=(row.get("dataset") or "").strip() or path.stem,
            subject=(row.get("subject") or "").strip() or _stem(src),
            label=resolve(label) if label else None,
        ))
    return volumes


def discover(input_: str) -> tuple[list[InputVolume], list[str]]:
    """A folder (searched recursively for .nii/.nii.gz) or a .csv manifest → (the volumes to shard, the files
    of the folder that are not an image type voxfm reads: reported as ignored, never silently dropped)."""
    path = Path(input_)
    if path.is_file() and path.suffix == ".csv":
        return read_manifest(path), []
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        volumes = [InputVolume(path=str(p.resolve()), dataset=p.parent.name, subject=_stem(str(p)))
                   for p in files if is_nifti(p)]
        return volumes, [str(p.resolve()) for p in files if not is_nifti(p)]
    raise ValueError(f"input={input_}: expected a folder of NIfTI files or a manifest .csv")


def reason_counts(rejected: list[dict]) -> dict[str, int]:
    """Rejections per kind: the reason up to its first colon ("unreadable", "implausible spacing", ...)."""
    counts: dict[str, int] = {}
    for r in rejected:
        kind = r["reason"].split(":")[0].split(" (")[0].strip()
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sample_key(vol: InputVolume, digest: str) -> str:
    """WebDataset keys may not contain dots; the hash keeps same-named subjects apart."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{vol.dataset}_{vol.subject}")
    return f"{name}_{digest[:12]}"


def frames_to_shard(path: str, mode: str) -> list[int | None]:
    """None: the file as one 3D volume (a 4D one is then rejected with its reason); else the frame indices."""
    count = n_frames(path)
    if count == 1 or mode == "reject":
        return [None]
    return [0] if mode == "first" else list(range(count))


def shard_one(vol: InputVolume, opts: PreprocessOptions, codec: str,
              frame: int | None = None) -> tuple[dict[str, bytes], dict]:
    image = load_volume(vol.path, opts.max_voxels, opts.spacing_bounds, opts.max_anisotropy, frame)
    try:
        label = load_volume(vol.label, opts.max_voxels, opts.spacing_bounds, opts.max_anisotropy) if vol.label else None
    except RejectedVolume as err:
        raise RejectedVolume(f"label {vol.label}: {err}") from err
    img, lab, meta = preprocess(image, vol.modality, opts, label)
    files = {"image.b2": payload.encode(img, codec)}
    if lab is not None:
        files["label.b2"] = payload.encode(lab, codec)
    return files, meta


def run_shard(input: str, output: str, preprocess: dict, shard_max_mb: float = 256.0, codec: str = "lz4hc",
              progress: bool = True) -> dict:
    """Shard every input or reject it with a reason. Inputs already in `output/index.json` (same
    source path and content hash) are skipped, so a rerun only does unfinished work."""
    opts = PreprocessOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items()})
    if codec not in payload.CODECS:
        raise ValueError(f"codec={codec!r}; allowed: {list(payload.CODECS)}")
    if shard_max_mb <= 0:
        raise ValueError(f"shard_max_mb={shard_max_mb}: expected a positive size in MB")
    volumes, ignored = discover(input)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    index = load_index(out)
    config = {"preprocess": json.loads(json.dumps(asdict(opts))), "codec": codec}
    if index["config"] is not None and index["config"] != config:
        raise ValueError(f"output={output} holds shards made with other settings {index['config']}; "
                         f"use a new output folder for {config}")
    index["config"] = config
    done = {(s["source_path"], s["content_hash"]) for s in index["samples"]}
    writer = ShardSetWriter(out, index, max_bytes=int(shard_max_mb * 2**20))
    rejected, skipped, sharded, n_samples = [], 0, 0, 0
    for vol in tqdm(volumes, desc="shard", unit="vol", disable=not progress):
        try:
            digest = file_hash(vol.path)
            if (vol.path, digest) in done:
                skipped += 1
                continue
            # every frame of an input is prepared before any is written: an input lands whole or not at all
            samples = [(frame, *shard_one(vol, opts, codec, frame)) for frame in frames_to_shard(vol.path, opts.frames)]
        except (RejectedVolume, OSError) as err:
            reason = str(err) if isinstance(err, RejectedVolume) else f"unreadable: {err}"
            rejected.append({"path": vol.path, "reason": reason})
            continue
        for frame, files, meta in samples:
            meta.update(dataset=vol.dataset, subject=vol.subject, source_path=vol.path, content_hash=digest,
                        label_path=vol.label, frame=frame)
            key = sample_key(vol, digest) + ("" if frame is None else f"_f{frame:04d}")
            # The index stays light: foreground points travel only inside the sample.
            light = {k: v for k, v in meta.items() if k != "foreground_points"}
            writer.add(key, {**files, "json": json.dumps(meta).encode()}, light)
        done.add((vol.path, digest))
        sharded += 1
        n_samples += len(samples)
    writer.flush()
    write_json_atomic(out / "index.json", index)
    report = {
        "n_inputs": len(volumes),
        "n_sharded": sharded + skipped,
        "n_new": sharded,
        "n_new_samples": n_samples,  # more than n_new when preprocess.frames=all splits 4D series
        "n_skipped": skipped,
        "n_rejected": len(rejected),
        "rejected_by_reason": reason_counts(rejected),
        "rejected": rejected,
        "n_ignored": len(ignored),
        "ignored": ignored,
        "n_shards": len(index["shards"]),
    }
    write_json_atomic(out / REPORT, report)
    return report
