"""`voxfm bench data`: decode speed per core of the shard payload vs nibabel on the same volumes as .nii.gz.

Each volume of the shard set is decoded from its stored payload, re-encoded with every payload codec,
and written as .nii.gz with nibabel's defaults; all are timed on one thread, best of `repeats`.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
import time
from pathlib import Path

import blosc2
import nibabel as nib
import numpy as np

from data import payload
from data.shards import shard_urls


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def read_payloads(shards: str, max_samples: int) -> list[tuple[bytes, dict]]:
    """(image payload, metadata) of the first `max_samples` samples of a local shard set."""
    out: list[tuple[bytes, dict]] = []
    for url in shard_urls(shards):
        with tarfile.open(url) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(n for n in members if n.endswith(".image.b2")):
                key = name[: -len(".image.b2")]
                meta = json.loads(tar.extractfile(members[f"{key}.json"]).read())
                out.append((tar.extractfile(members[name]).read(), meta))
                if len(out) >= max_samples:
                    return out
    return out


def bench_data(shards: str, max_samples: int = 16, repeats: int = 3) -> dict:
    """→ {"formats": {name: {"mb_per_s_per_core", "ratio", "speedup"}}, ...} for the payload codecs and nibabel."""
    samples = read_payloads(shards, max_samples)
    if not samples:
        raise ValueError(f"shards={shards}: no samples to benchmark")
    seconds = {f"blosc2 {c}": 0.0 for c in payload.CODECS} | {"nibabel .nii.gz": 0.0}
    stored = dict.fromkeys(seconds, 0)
    raw_bytes = 0
    previous_threads = blosc2.set_nthreads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (frame, meta) in enumerate(samples):
                vol = payload.decode(frame)
                raw_bytes += vol.nbytes
                for codec in payload.CODECS:
                    encoded = payload.encode(vol, codec)
                    seconds[f"blosc2 {codec}"] += _best_time(lambda f=encoded: payload.decode(f), repeats)
                    stored[f"blosc2 {codec}"] += len(encoded)
                nii = Path(tmp) / f"{i}.nii.gz"
                nib.save(nib.Nifti1Image(vol, np.asarray(meta["affine"])), nii)
                seconds["nibabel .nii.gz"] += _best_time(lambda p=nii: np.asanyarray(nib.load(p).dataobj), repeats)
                stored["nibabel .nii.gz"] += nii.stat().st_size
    finally:
        blosc2.set_nthreads(previous_threads)
    mb = raw_bytes / 1e6
    nib_rate = mb / seconds["nibabel .nii.gz"]
    formats = {name: {"mb_per_s_per_core": round(mb / s, 1), "ratio": round(raw_bytes / stored[name], 2),
                      "speedup": round(mb / s / nib_rate, 2)} for name, s in seconds.items()}
    return {"n_volumes": len(samples), "decoded_mb": round(mb, 1), "shard_codec": _shard_codec(shards),
            "formats": formats}


def _shard_codec(shards: str) -> str | None:
    index = Path(str(shards)) / "index.json"
    return json.loads(index.read_text())["config"].get("codec") if index.exists() else None


def format_data_bench(result: dict) -> str:
    lines = [f"decode throughput, 1 core, {result['n_volumes']} volumes, {result['decoded_mb']} MB decoded "
             f"(this shard set uses codec={result['shard_codec']}):",
             f"  {'format':<18}{'MB/s per core':>14}{'compression':>13}{'vs nibabel':>12}"]
    for name, f in result["formats"].items():
        lines.append(f"  {name:<18}{f['mb_per_s_per_core']:>14}{f['ratio']:>12}x{f['speedup']:>11}x")
    return "\n".join(lines)
