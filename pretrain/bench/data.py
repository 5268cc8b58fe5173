"""`voxfm bench data`: decode speed per core of the shard payload vs nibabel on the same volumes as .nii.gz,
and the rate of one CPU data worker.

Each volume of the shard set is decoded from its stored payload, re-encoded with every payload codec,
and written as .nii.gz with nibabel's defaults; all are timed on one thread, best of `repeats`.
The worker line times what a data-loader worker does per volume — decode it once, cut the `regions_per_volume`
regions it serves from the pool in the stored dtype, write them in batches of `BATCH` into a reused buffer (a GPU
run's pinned buffers, data/stream/device_feed.py) — next to the former CPU path that cut 16 float32-normalised crops per
read, and turns regions/s into CPU cores per GPU at `GPU_SAMPLES_PER_S` one-view samples/s. The loader lines run
the real stream (volume pool on) through each loader, hand-over included; on a machine without CUDA their batches
are fresh tensors (first-touch page faults included). The last table puts the host-cut feed (the thread loader's
line) beside the device-cut one (the device pool on the meta device): host CPU per region, host-to-device bytes,
shard reads and the device pool's bytes (pretrain/bench/device_cut.py).
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path

import blosc2
import nibabel as nib
import numpy as np
import torch

from voxfm.data.ingest import payload
from voxfm.data.ingest.preprocess import normalise
from voxfm.data.stream.crops import random_crop, random_crops
from voxfm.data.stream.device_feed import PinnedBuffers, collate_into
from voxfm.data.stream.loader import ThreadLoader
from voxfm.data.stream.regions import RegionStream, region_loader
from voxfm.data.stream.samples import load_volume, region_record
from voxfm.data.stream.shards import shard_urls
from voxfm.pretrain.bench.device_cut import GPU_SAMPLES_PER_S, bench_cut_paths, format_cut_paths
from voxfm.pretrain.errors import ConfigError
from voxfm.pretrain.runtime.timing import best_time, time_call

BATCH = 32  # regions per batch: mae_vit_b's per-GPU batch
FORMER_REGIONS_PER_READ = 16  # before the volume pool


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


def bench_worker(samples: list[tuple[bytes, dict]], region_size, regions_per_volume: int, repeats: int) -> dict:
    """Regions/s of one worker thread (decode, cut, collate into a batch), and of the former path that also
    normalised every crop to float32."""
    rng = np.random.default_rng(0)
    raw = [{"json": json.dumps(meta).encode(), "image.b2": frame} for frame, meta in samples]
    region_size = tuple(region_size)

    def old_path(sample):
        meta = json.loads(sample["json"])
        norm = meta["normalisation"]
        crops = random_crops(
            payload.decode(sample["image.b2"]),
            meta["foreground_points"],
            region_size,
            FORMER_REGIONS_PER_READ,
            0.67,
            rng,
            pad_value=norm["low"],
        )
        return torch.stack([torch.from_numpy(normalise(c, norm))[None] for c in crops])

    buffers = PinnedBuffers(limit=2, pin=False)  # reused as on a GPU, where the pinned buffers are (no fresh pages)

    def new_path(sample):
        volume = load_volume(sample, region_size)
        for start in range(0, regions_per_volume, BATCH):
            regions = [
                region_record(random_crop(volume.array, volume.points, region_size, 0.67, rng), volume)
                for _ in range(min(BATCH, regions_per_volume - start))
            ]
            batch = collate_into(regions, buffers)
            buffers.give(batch["_buffer"])

    new_s = sum(best_time(lambda s=s: new_path(s), repeats) for s in raw)
    old_s = sum(best_time(lambda s=s: old_path(s), repeats) for s in raw)
    n = len(raw) * regions_per_volume
    rate = n / new_s
    shard_bytes = sum(len(frame) for frame, _ in samples)
    return {
        "region_size": list(region_size),
        "regions_per_volume": regions_per_volume,
        "regions_per_s_per_worker": round(rate, 1),
        "float_crops_per_s_per_worker": round(len(raw) * FORMER_REGIONS_PER_READ / old_s, 1),
        "cores_per_gpu": round(GPU_SAMPLES_PER_S / rate, 1),
        "shard_mb_per_region": round(shard_bytes / n / 1e6, 3),
        "shard_gb_per_s_per_gpu": round(GPU_SAMPLES_PER_S * shard_bytes / n / 1e9, 2),
    }


def bench_loader(
    shards: str, region_size, regions_per_volume: int, loader: str, batch_size: int = BATCH, batches: int = 40
) -> tuple[float, dict]:
    """Regions/s that one data worker (a process or a thread) delivers to the training loop, hand-over included,
    from the volume pool (a 4 GiB budget); and the last batch (its read counters)."""
    stream = RegionStream(shards, region_size, regions_per_volume, pool_gib=4.0, group=batch_size)
    batches_of = ThreadLoader(stream, batch_size, 1) if loader == "thread" else region_loader(stream, batch_size, 1)
    it = iter(batches_of)
    seen: list[dict] = []
    seconds = time_call(lambda: seen.append(next(it)), "cpu", warmup=5, steps=batches)
    return sum(b["region"].shape[0] for b in seen[5:]) / (seconds * batches), seen[-1]


def bench_data(
    shards: str, max_samples: int = 16, repeats: int = 3, region_size=(96, 96, 96), regions_per_volume: int = 200
) -> dict:
    """→ {"formats": {name: {"mb_per_s_per_core", "ratio", "speedup"}}, ...} for the payload codecs and nibabel,
    "worker": one worker's and the loaders' rates, "cut_paths": {"host_cut", "device_cut"} (`bench_cut_paths`)."""
    samples = read_payloads(shards, max_samples)
    if not samples:
        raise ConfigError(f"shards={shards}: no samples to benchmark")
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
                    seconds[f"blosc2 {codec}"] += best_time(lambda f=encoded: payload.decode(f), repeats)
                    stored[f"blosc2 {codec}"] += len(encoded)
                nii = Path(tmp) / f"{i}.nii.gz"
                nib.save(nib.Nifti1Image(vol, np.asarray(meta["affine"])), nii)
                seconds["nibabel .nii.gz"] += best_time(lambda p=nii: np.asanyarray(nib.load(p).dataobj), repeats)
                stored["nibabel .nii.gz"] += nii.stat().st_size
        worker = bench_worker(samples, region_size, regions_per_volume, repeats)
    finally:
        blosc2.set_nthreads(previous_threads)
    paths = bench_cut_paths(shards, region_size, regions_per_volume, BATCH)  # the thread loader is the host cut
    host = paths["host_cut"]
    worker["thread_distinct_volumes_per_batch"] = host["distinct_volumes_per_batch"]
    worker["thread_regions_per_s"] = host["regions_per_s"]
    worker["thread_cores_per_gpu"] = round(GPU_SAMPLES_PER_S / host["regions_per_s"], 1)
    rate, last = bench_loader(shards, region_size, regions_per_volume, "process")
    worker["process_distinct_volumes_per_batch"] = last["volumes"]
    worker["process_regions_per_s"] = round(rate, 1)
    worker["process_cores_per_gpu"] = round(GPU_SAMPLES_PER_S / rate, 1)
    mb = raw_bytes / 1e6
    nib_rate = mb / seconds["nibabel .nii.gz"]
    formats = {
        name: {
            "mb_per_s_per_core": round(mb / s, 1),
            "ratio": round(raw_bytes / stored[name], 2),
            "speedup": round(mb / s / nib_rate, 2),
        }
        for name, s in seconds.items()
    }
    return {
        "n_volumes": len(samples),
        "decoded_mb": round(mb, 1),
        "shard_codec": _shard_codec(shards),
        "formats": formats,
        "worker": worker,
        "cut_paths": paths,
    }


def _shard_codec(shards: str) -> str | None:
    index = Path(str(shards)) / "index.json"
    return json.loads(index.read_text())["config"].get("codec") if index.exists() else None


def format_data_bench(result: dict) -> str:
    lines = [
        f"decode throughput, 1 core, {result['n_volumes']} volumes, {result['decoded_mb']} MB decoded "
        f"(this shard set uses codec={result['shard_codec']}):",
        f"  {'format':<18}{'MB/s per core':>14}{'compression':>13}{'vs nibabel':>12}",
    ]
    for name, f in result["formats"].items():
        lines.append(f"  {name:<18}{f['mb_per_s_per_core']:>14}{f['ratio']:>12}x{f['speedup']:>11}x")
    w = result["worker"]
    lines += [
        f"one data worker (1 core), {w['regions_per_volume']} regions of {w['region_size']} per decoded volume "
        f"(shard reads {w['shard_mb_per_region']} MB per region, {w['shard_gb_per_s_per_gpu']} GB/s per GPU):",
        f"  {'path':<52}{'regions/s':>10}{'cores per GPU':>15}",
        f"  {'decode + cut + collate, in the worker':<52}{w['regions_per_s_per_worker']:>10}{w['cores_per_gpu']:>15}",
        f"  {'data.loader=thread (hand-over included)':<52}{w['thread_regions_per_s']:>10}"
        f"{w['thread_cores_per_gpu']:>15}",
        f"  {'data.loader=process (shared-memory hand-over)':<52}{w['process_regions_per_s']:>10}"
        f"{w['process_cores_per_gpu']:>15}",
        f"  {'former path: 16 float32 crops per read, in the worker':<52}{w['float_crops_per_s_per_worker']:>10}"
        f"{round(GPU_SAMPLES_PER_S / w['float_crops_per_s_per_worker'], 1):>15}",
        f"  (cores per GPU at {GPU_SAMPLES_PER_S} one-view samples/s)",
        *format_cut_paths(result["cut_paths"], w["regions_per_volume"], BATCH),
    ]
    return "\n".join(lines)
