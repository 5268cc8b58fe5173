"""`voxfm bench data`: decode speed per core of the shard payload vs nibabel on the same volumes as .nii.gz."""

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

ALTERNATIVE = "lz4hc"  # the faster-decoding codec, measured beside whatever the shard set uses


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
    """Best-of-`repeats` single-thread decode throughput (MB/s of decoded voxels) for both formats."""
    samples = read_payloads(shards, max_samples)
    if not samples:
        raise ValueError(f"shards={shards}: no samples to benchmark")
    previous_threads = blosc2.set_nthreads(1)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (frame, meta) in enumerate(samples):
                vol = payload.decode(frame)
                nii = Path(tmp) / f"{i}.nii.gz"
                nib.save(nib.Nifti1Image(vol, np.asarray(meta["affine"])), nii)
                t_b2 = _best_time(lambda f=frame: payload.decode(f), repeats)
                alt = payload.encode(vol, ALTERNATIVE)
                t_alt = _best_time(lambda f=alt: payload.decode(f), repeats)
                t_nib = _best_time(lambda p=nii: np.asanyarray(nib.load(p).dataobj), repeats)
                rows.append({"key": meta.get("subject", str(i)), "shape": list(vol.shape), "dtype": str(vol.dtype),
                             "mb": vol.nbytes / 1e6, "b2_bytes": len(frame), "nii_gz_bytes": nii.stat().st_size,
                             "alt_bytes": len(alt), "b2_s": t_b2, "alt_s": t_alt, "nib_s": t_nib})
    finally:
        blosc2.set_nthreads(previous_threads)
    total_mb = sum(r["mb"] for r in rows)
    b2 = total_mb / sum(r["b2_s"] for r in rows)
    nib_rate = total_mb / sum(r["nib_s"] for r in rows)
    alt = total_mb / sum(r["alt_s"] for r in rows)
    return {
        "n_volumes": len(rows), "decoded_mb": round(total_mb, 1),
        "blosc2_mb_per_s_per_core": round(b2, 1), "nibabel_mb_per_s_per_core": round(nib_rate, 1),
        "speedup": round(b2 / nib_rate, 2),
        f"{ALTERNATIVE}_mb_per_s_per_core": round(alt, 1), f"{ALTERNATIVE}_speedup": round(alt / nib_rate, 2),
        f"{ALTERNATIVE}_ratio": round(sum(r["mb"] * 1e6 for r in rows) / sum(r["alt_bytes"] for r in rows), 2),
        "blosc2_ratio": round(sum(r["mb"] * 1e6 for r in rows) / sum(r["b2_bytes"] for r in rows), 2),
        "nii_gz_ratio": round(sum(r["mb"] * 1e6 for r in rows) / sum(r["nii_gz_bytes"] for r in rows), 2),
        "volumes": rows,
    }


def format_data_bench(result: dict) -> str:
    return "\n".join([
        f"decode throughput, 1 core, {result['n_volumes']} volumes, {result['decoded_mb']} MB decoded:",
        f"  {'format':<28}{'MB/s per core':>14}{'compression':>13}",
        f"  {'shard payload (as sharded)':<28}{result['blosc2_mb_per_s_per_core']:>14}{result['blosc2_ratio']:>12}x"
        f"   {result['speedup']}x nibabel",
        f"  {'blosc2 ' + ALTERNATIVE + ' (codec=' + ALTERNATIVE + ')':<28}"
        f"{result[ALTERNATIVE + '_mb_per_s_per_core']:>14}{result[ALTERNATIVE + '_ratio']:>12}x"
        f"   {result[ALTERNATIVE + '_speedup']}x nibabel",
        f"  {'nibabel .nii.gz':<28}{result['nibabel_mb_per_s_per_core']:>14}{result['nii_gz_ratio']:>12}x",
    ])
