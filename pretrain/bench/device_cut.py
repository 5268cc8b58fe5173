"""`voxfm bench data`'s two feeds side by side, with the host's cost of each: regions cut on the host (the thread
loader with the host volume pool, `data.device_pool_gib=0`) and regions cut on the device (the device pool,
data/stream/device_pool.py).

Host cost is the CPU time of the whole process (`time.process_time`: every thread, the data worker's and the loop's)
over the timed batches, per region; times `GPU_SAMPLES_PER_S` it is the CPU cores one GPU needs at that rate. The
device-cut path runs on the meta device with `stage=True`: every host cost is paid (shard read, decode, the copy into
a reused staging buffer that the device copy reads, the pool's picks, the slicing and stacking launches, Python) and the
device's own work costs nothing, so the GPU's slicing and stacking kernels and the PCIe copy are not in its figures.

Both run one worker thread, batches of `batch_size`, pools of the same size P (`POOL_VOLUMES`, or the set's distinct
volumes if fewer) within 4 GiB, each volume serving `regions_per_volume` regions. Timing starts once the first pool
is spent: a held volume serves batch/P regions a batch on average, so the first fill's longest-lived volume is spent
after P × regions_per_volume / batch batches, the warm-up. Then `READS` volume reads' worth of batches are timed
(at the steady state's one read per `regions_per_volume` regions), enough that the pool's reads are in the window
at their steady rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import torch

from voxfm.data.stream.device_pool import DevicePoolLoader
from voxfm.data.stream.loader import ThreadLoader
from voxfm.data.stream.regions import RegionStream

GPU_SAMPLES_PER_S = 9000  # ViT-B MAE 96³ on one H100: the goal (README, Design)
POOL_VOLUMES = 48  # data.pool_volumes' default: the device pool held to the host pool's size in the bench
POOL_BYTES = 4 * 2**30  # both pools' budget (on the meta device nothing is allocated)
READS = 32  # volume reads' worth of timed batches
GOALS = {"cores_per_gpu": "≤ 1.5", "h2d_mb_per_region": "≤ 0.2 (96³)", "shard_gb_per_s_per_gpu": "≤ 0.5"}


def schedule(pool_volumes: int, regions_per_volume: int, batch_size: int) -> tuple[int, int]:
    """(warm-up batches, timed batches): past the first pool, then `READS` reads' worth (module docstring)."""
    return (
        math.ceil(pool_volumes * regions_per_volume / batch_size),
        math.ceil(READS * regions_per_volume / batch_size),
    )


def timed_window(
    batches: Iterator[dict], warmup: int, steps: int, sent: Callable[[], int] | None = None
) -> tuple[dict, dict]:
    """`warmup` batches, then `steps` timed ones → ({"regions", "wall_s", "cpu_s", "loop_cpu_s", "read_bytes",
    "sent_bytes"}, the last batch). cpu_s: the whole process; loop_cpu_s: this thread's (the training loop's).
    read_bytes: shard bytes read in the window (each worker's cumulative reports); sent_bytes: `sent()`'s increase
    (bytes sent to the device), else the batches' region bytes."""
    reads: dict[int, int] = {}
    batch = None
    for _ in range(warmup):
        batch = next(batches)
        reads[batch.get("worker", 0)] = batch["read_bytes"]
    start_reads, start_sent = dict(reads), sent() if sent else 0
    regions = region_bytes = 0
    wall, cpu, loop = time.perf_counter(), time.process_time(), time.thread_time()
    for _ in range(steps):
        batch = next(batches)
        regions += batch["region"].shape[0]
        region_bytes += batch["region"].element_size() * batch["region"].numel()
        reads[batch.get("worker", 0)] = batch["read_bytes"]
    window = {
        "regions": regions,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "loop_cpu_s": time.thread_time() - loop,
        "read_bytes": sum(n - start_reads.get(w, 0) for w, n in reads.items()),
        "sent_bytes": sent() - start_sent if sent else region_bytes,
    }
    return window, batch


def path_figures(window: dict, last: dict, pool_volumes: int, warmup: int, steps: int, held: int | None) -> dict:
    """One path's row: wall regions/s, host CPU per region (all threads, and the loop's thread alone), cores per GPU
    and shard GB/s per GPU at `GPU_SAMPLES_PER_S`, host-to-device MB per region, device pool MB held."""
    n = window["regions"]
    return {
        "regions_per_s": round(n / window["wall_s"], 1),
        "cpu_ms_per_region": round(window["cpu_s"] / n * 1e3, 4),
        "loop_thread_cpu_ms_per_region": round(window["loop_cpu_s"] / n * 1e3, 4),
        "cores_per_gpu": round(window["cpu_s"] / n * GPU_SAMPLES_PER_S, 2),
        "h2d_mb_per_region": round(window["sent_bytes"] / n / 1e6, 4),
        "shard_gb_per_s_per_gpu": round(window["read_bytes"] / n * GPU_SAMPLES_PER_S / 1e9, 3),
        "device_pool_mb": None if held is None else round(held / 1e6, 1),
        "distinct_volumes_per_batch": last["volumes"],
        "pool_volumes": pool_volumes,
        "warmup_batches": warmup,
        "timed_batches": steps,
    }


def bench_host_cut(shards: str, region_size, regions_per_volume: int, batch_size: int) -> dict:
    """The host-cut path: `ThreadLoader` (one thread) over the host volume pool; each batch's regions are what the
    device is sent (on CUDA: pinned and copied by `DeviceFeed`; elsewhere fresh batch tensors, page faults
    included)."""
    stream = RegionStream(
        shards,
        region_size,
        regions_per_volume,
        pool_gib=POOL_BYTES / 2**30,
        pool_volumes=POOL_VOLUMES,
        group=batch_size,
    )
    warmup, steps = schedule(stream.pool_volumes, regions_per_volume, batch_size)
    batches = iter(ThreadLoader(stream, batch_size, 1))
    try:
        window, last = timed_window(batches, warmup, steps)
    finally:
        batches.close()  # stops its thread before the next path is timed
    return path_figures(window, last, stream.pool_volumes, warmup, steps, held=None)


def bench_device_cut(shards: str, region_size, regions_per_volume: int, batch_size: int) -> dict:
    """The device-cut path: `DevicePoolLoader` on the meta device, `stage=True`, one worker thread (module
    docstring); host-to-device bytes are the volumes sent over the regions cut from them."""
    stream = RegionStream(shards, region_size, regions_per_volume, group=batch_size, device_pool_volumes=POOL_VOLUMES)
    loader = DevicePoolLoader(stream, batch_size, 1, torch.device("meta"), POOL_BYTES, stage=True)
    warmup, steps = schedule(loader.max_volumes, regions_per_volume, batch_size)
    batches = iter(loader)
    try:
        window, last = timed_window(batches, warmup, steps, sent=lambda: loader.figures.sent_bytes)
    finally:
        batches.close()
    return path_figures(window, last, loader.max_volumes, warmup, steps, held=loader.figures.held_bytes)


def bench_cut_paths(shards: str, region_size, regions_per_volume: int, batch_size: int) -> dict:
    """→ {"host_cut": row, "device_cut": row} (`path_figures`), measured one after the other in this process."""
    return {
        "host_cut": bench_host_cut(shards, region_size, regions_per_volume, batch_size),
        "device_cut": bench_device_cut(shards, region_size, regions_per_volume, batch_size),
    }


def format_cut_paths(paths: dict, regions_per_volume: int, batch_size: int) -> list[str]:
    """The side-by-side table of `bench_cut_paths`."""
    host, device = paths["host_cut"], paths["device_cut"]
    rows = [
        ("regions/s (wall, one worker thread)", "regions_per_s"),
        ("host CPU ms per region (all threads)", "cpu_ms_per_region"),
        ("  of which the training loop's thread", "loop_thread_cpu_ms_per_region"),
        (f"CPU cores per GPU at {GPU_SAMPLES_PER_S} regions/s", "cores_per_gpu"),
        ("host-to-device MB per region", "h2d_mb_per_region"),
        (f"shard reads GB/s per GPU at {GPU_SAMPLES_PER_S} regions/s", "shard_gb_per_s_per_gpu"),
        ("device pool MB held", "device_pool_mb"),
        ("distinct volumes per batch", "distinct_volumes_per_batch"),
    ]
    lines = [
        f"regions cut on the host vs on the device, one worker thread, batches of {batch_size}, {regions_per_volume} "
        f"regions per volume, pools of {host['pool_volumes']} / {device['pool_volumes']} volumes,",
        f"{host['timed_batches']} / {device['timed_batches']} batches timed after {host['warmup_batches']} / "
        f"{device['warmup_batches']} warm-up (device pool on the meta device: host costs only, not the GPU's kernels "
        "or copies):",
        f"  {'figure':<52}{'host-cut':>10}{'device-cut':>12}{'goal':>14}",
    ]
    for label, key in rows:
        h, d = ("-" if row[key] is None else row[key] for row in (host, device))
        lines.append(f"  {label:<52}{h:>10}{d:>12}{GOALS.get(key, ''):>14}")
    return lines
