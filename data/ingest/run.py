"""`voxfm shard`: raw volumes (folder or manifest.csv) → shard set + index.json + report.json.

Work runs in `workers` processes, one subject (all its volumes) per task (`process_unit`, `data/ingest/units.py`);
results are written in a fixed order, and a shard only ends between subjects, so a subject's volumes share a shard.
A shard is published (renamed) before the index names it: killed at any moment, a rerun redoes only inputs the
index does not hold (by content hash), and every good volume ends in the shards exactly once. The workers never
outlive the command, and SIGTERM stops it with exit 75 (`data/ingest/workers.py`).

A shard set is shared: it records subjects as salted hashes (one salt per set, in index.json's config), paths
relative to the input root, and DICOM UIDs only with `preprocess.keep_dicom_uids=true`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from voxfm.data.ingest import payload
from voxfm.data.ingest.inputs import (
    InputVolume,
    Stamp,
    group_series,
    hash_file,
    pseudonym,
    relative,
    scan_dicom_file,
    strip_root,
)
from voxfm.data.ingest.layouts import discover
from voxfm.data.ingest.locks import locks_folder
from voxfm.data.ingest.nnunet import NOT_A_LABEL
from voxfm.data.ingest.preprocess import UNKNOWN_MODALITY, PreprocessOptions
from voxfm.data.ingest.shard_set import REPORT, ShardSetWriter, load_index, write_json_atomic
from voxfm.data.ingest.tally import tally_index
from voxfm.data.ingest.units import Unit, process_unit
from voxfm.data.ingest.volumes import RejectedVolume
from voxfm.data.ingest.workers import ShardStopped as ShardStopped  # re-exported: callers catch them from here
from voxfm.data.ingest.workers import WorkerDied as WorkerDied
from voxfm.data.ingest.workers import available_cores, ordered, sigterm_stops, worker_pool


def reason_counts(rejected: list[dict]) -> dict[str, int]:
    """Rejections per kind: the reason up to its first colon ("unreadable", "implausible spacing", ...)."""
    counts: dict[str, int] = {}
    for r in rejected:
        kind = r["reason"].split(":")[0].split(" (")[0].strip()
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _hash_or_reason(path: str) -> tuple[str, Stamp | None, str | None]:
    try:
        return (*hash_file(path), None)
    except RejectedVolume as err:
        return "", None, str(err)
    except OSError as err:
        return "", None, f"unreadable: {err}"


def _scan(found, pool, progress: bool) -> tuple[list[tuple[InputVolume, str]], list[dict], list[str]]:
    """Hash every input (and read DICOM headers): (inputs with hashes, rejections, DICOM files without images).
    One channel of a 4D file is told from the others by its index, hashed in with the file's content. Each input
    carries its files' identities from the hashing, checked again once it is read (`inputs.check_unchanged`)."""
    inputs, rejected, scanned, stamps = [], list(found.rejected), [], {}
    n = len(found.nifti) + len(found.dicom_files)
    with tqdm(total=n, desc="scan", unit="file", disable=not progress or n == 0) as bar:
        hashes = ordered(pool, _hash_or_reason, [v.path for v in found.nifti], 64)
        for vol, (digest, stamp, reason) in zip(found.nifti, hashes):
            if reason is None:
                inputs.append((replace(vol, stamps=((vol.path, stamp),)), channel_digest(digest, vol.frame)))
            else:
                rejected.append({"path": vol.path, "reason": reason})
            bar.update()
        paths = [f for f, _ in found.dicom_files]
        for (file, template), (header, digest, stamp, reason) in zip(
            found.dicom_files, ordered(pool, scan_dicom_file, paths, 64)
        ):
            if reason is not None:
                rejected.append({"path": file, "reason": reason})
            else:
                scanned.append((file, template, header, digest))
                stamps[file] = stamp
            bar.update()
    series, no_image, segmentations = group_series(scanned)
    series = [(replace(v, stamps=tuple((f, stamps[f]) for f in v.files)), digest) for v, digest in series]
    return inputs + series, rejected + segmentations, no_image


def channel_digest(digest: str, frame: int | None) -> str:
    return digest if frame is None else hashlib.sha256(f"{digest}:channel{frame}".encode()).hexdigest()


def _plan(inputs, index: dict) -> tuple[list[Unit], int, list[dict], list[dict]]:
    """Drop inputs already sharded (same hash and path, or the same file reached from another input root: one
    path ends the other) and duplicates (same hash, another path: rejected with the path kept); group the rest by
    subject. A label map found for an input sharded without one in an earlier run is rejected with the reason."""
    done = {s["content_hash"]: (s["source_path"], s.get("label_path")) for s in index["samples"]}
    units: dict[tuple[str, str], Unit] = {}
    skipped, rejected, late_labels = 0, [], []
    for vol, digest in inputs:
        path = relative(vol.path, vol.root)  # as the index records it
        old, old_label = done.get(digest, (None, None))
        if old is not None and (old == path or path.endswith("/" + old) or old.endswith("/" + path)):
            skipped += 1
            if vol.label and not old_label:
                why = f"its image {path} was sharded without a label by an earlier run; shard into a new output"
                late_labels.append({"path": vol.label, "reason": f"{NOT_A_LABEL}: {why} to pair them"})
        elif old is not None:
            rejected.append({"path": vol.path, "reason": f"duplicate: same content as {old}"})
        else:
            done[digest] = (path, vol.label)
            units.setdefault((vol.dataset, vol.subject), []).append((vol, digest))
    return [units[k] for k in sorted(units)], skipped, rejected, late_labels


@locks_folder("output", "output")  # one job per shard set: a second exits 2 naming the holder
@sigterm_stops()  # SIGTERM: the workers killed, the shards published so far kept, exit 75
def run_shard(
    input_path: str,
    output: str,
    preprocess: dict,
    shard_max_mb: float = 256.0,
    codec: str = "lz4hc",
    progress: bool = True,
    workers: int = 0,
    layout: str = "auto",
    channels: str = "separate",
    unknown_modality: str = "reject",
) -> dict:
    """Shard every input or reject it with a reason; `workers=0` uses every core. `layout`, `channels`: how the
    input is read (`data/ingest/layouts.py`); `unknown_modality=keep` shards what no evidence names as "unknown"."""
    opts = PreprocessOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items()})
    if codec not in payload.CODECS:
        raise ValueError(f"codec={codec!r}; allowed: {list(payload.CODECS)}")
    if isinstance(shard_max_mb, bool) or not isinstance(shard_max_mb, (int, float)) or shard_max_mb <= 0:
        raise ValueError(f"shard_max_mb={shard_max_mb!r}: expected a positive size in MB")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers={workers!r}: expected an integer >= 1, or 0 for every core")
    if unknown_modality not in UNKNOWN_MODALITY:
        raise ValueError(f"unknown_modality={unknown_modality!r}; allowed: {', '.join(UNKNOWN_MODALITY)}")
    start = time.perf_counter()
    found = discover(input_path, layout, channels, output)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    index = load_index(out)
    config = {"preprocess": json.loads(json.dumps(asdict(opts))), "codec": codec}
    stored = dict(index["config"] or {})
    salt = stored.pop("subject_salt", None) or secrets.token_hex(16)  # once per shard set: pseudonyms stay
    if index["config"] is not None and stored != config:
        changed = "; ".join(f"{k}: {a} → {b}" for k, a, b in _differences(stored, config))
        raise ValueError(f"output={output} holds shards made with other settings ({changed}); use a new output folder")
    if not isinstance(salt, str):
        raise ValueError(f"output={output}: index.json config.subject_salt={salt!r}: expected a string")
    index["config"] = {**config, "subject_salt": salt}
    n_workers = workers or available_cores()
    with worker_pool(n_workers) as pool:
        inputs, rejected, no_image = _scan(found, pool, progress)
        inputs = [(replace(vol, subject=pseudonym(vol.subject, salt)), digest) for vol, digest in inputs]
        n_inputs = len(inputs) + len(rejected)  # + files rejected while scanning (damaged DICOM)
        units, skipped, duplicates, late_labels = _plan(inputs, index)
        n_inputs += len(late_labels)  # a label map left unpaired is a file given and not sharded, as an orphan is
        rejected += duplicates + late_labels
        writer = ShardSetWriter(out, index, max_bytes=int(shard_max_mb * 2**20))
        sharded = n_samples = 0
        work = sum(len(u) for u in units)
        with tqdm(total=work, desc="shard", unit="vol", disable=not progress or work == 0) as bar:
            task = _Task(opts, codec, unknown_modality)
            for results in ordered(pool, task, units, window=2 * n_workers):
                for vol, _, outcome in results:
                    if isinstance(outcome, str):
                        rejected.append({"path": vol.path, "reason": outcome, "label": vol.label})
                        continue
                    for key, files, meta in outcome:
                        # the index stays light: foreground points travel only inside the sample
                        light = {k: v for k, v in meta.items() if k != "foreground_points"}
                        writer.add(key, {**files, "json": json.dumps(meta).encode()}, light)
                    sharded += 1
                    n_samples += len(outcome)
                writer.end_group()
                bar.update(len(results))
        writer.flush()
    write_json_atomic(out / "index.json", index)
    root = found.root
    ignored = [relative(p, root) for p in found.ignored + no_image]
    rejected = [
        {"path": relative(r["path"], root), "reason": strip_root(r["reason"], root, r["path"], r.get("label"))}
        for r in rejected
    ]
    seconds = time.perf_counter() - start
    report = {
        "n_inputs": n_inputs,
        "n_sharded": sharded + skipped,
        "n_new": sharded,
        "n_new_samples": n_samples,  # more than n_new when preprocess.frames=all splits 4D series
        "n_skipped": skipped,
        "n_rejected": len(rejected),
        "rejected_by_reason": reason_counts(rejected),
        "rejected": rejected,
        "n_ignored": len(ignored),
        "ignored": ignored,
        "notes": [strip_root(n, root) for n in found.notes],  # a damaged dataset.json, a folder link read once
        "n_shards": len(index["shards"]),
        **tally_index(index, found.datasets),  # the shard set's inputs per dataset, modality and its source
        "workers": n_workers,
        "seconds": round(seconds, 2),
    }
    write_json_atomic(out / REPORT, report)
    return report


def _differences(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every setting that differs (a key only one side has: `absent`)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "absent"), new.get(key, "absent")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


class _Task:
    """Picklable `process_unit` with its settings bound (for the worker pool). Unlike a `partial`, it looks the
    function up inside the worker, so only the settings travel (and a test can replace it here, in this module)."""

    def __init__(self, opts: PreprocessOptions, codec: str, unknown_modality: str):
        self.opts, self.codec, self.unknown_modality = opts, codec, unknown_modality

    def __call__(self, unit: Unit):
        return process_unit(unit, self.opts, self.codec, self.unknown_modality)
