"""How much of the training device the device pool (`data.device_pool_gib`, data/stream/device_pool.py) may take,
decided before a run writes anything: null chooses for the card, a number is checked against what the device has
free, and a pool that cannot work is refused in one line."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from voxfm.pretrain.errors import ConfigError


def device_pool_budget(data: DictConfig, on_gpu: bool) -> float:
    """Bytes of the device pool `data.device_pool_gib` asks for (0: the host pool): null is min(8 GiB, an eighth of
    the GPU's memory, a quarter of its free memory) on a GPU with thread workers, else 0. Refused in one line when
    the device has less free memory than a number asks for (the GPU's free memory; a CPU's available memory), or
    with worker processes."""
    gib = data.get("device_pool_gib")
    if gib == 0 or (gib is None and (not on_gpu or data.loader != "thread")):  # null: the device pool where it can be
        return 0.0
    if data.loader != "thread":
        raise ConfigError(
            f"data.device_pool_gib={gib:g} needs data.loader=thread "
            "(worker processes cannot hand decoded volumes to the device pool); use data.loader=thread, or "
            "data.device_pool_gib=0 for the host pool"
        )
    free, where = free_device_bytes(on_gpu)
    if gib is None:  # 8 GiB on an 80 GB card (400 volumes of a 1.5 mm body CT); less on a smaller or busier one
        return min(8 * 2**30, torch.cuda.get_device_properties(local_gpu()).total_memory / 8, free / 4)
    if gib * 2**30 > free:
        raise ConfigError(
            f"data.device_pool_gib={gib:g}: {where} has only {free / 2**30:.1f} GiB free; lower "
            "data.device_pool_gib (0: the host pool, data.pool_gib)"
        )
    return gib * 2**30


def local_gpu() -> int:
    """The GPU this process will train on, before training has chosen it: its local rank's (torchrun, SLURM,
    Lightning's launchers set LOCAL_RANK / SLURM_LOCALID), else 0."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))


def free_device_bytes(on_gpu: bool) -> tuple[float, str]:
    """(free bytes, what they are of): the current GPU's free memory, or the memory this machine has available."""
    if on_gpu:
        gpu = local_gpu()
        return torch.cuda.mem_get_info(gpu)[0], f"GPU {gpu} (the training device)"
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        free = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: what the OS calls available pages
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return free, "the CPU (the training device)"
