"""GPU check of the one-copy feed (data/stream/device_feed.py): batches from the thread loader arrive on the device
equal to the host batches, with no hidden host sync or pageable copy, threaded and not, and the loader stops cleanly.

usage: python scripts/check_device_feed.py <shard_dir>   (CUDA only; `make gpu-check` runs it)
"""

from __future__ import annotations

import sys

import torch

from voxfm.data.stream.loader import ThreadLoader
from voxfm.data.stream.regions import RegionStream


def batches(shards: str, n: int, threads: int, pin: bool) -> list[dict]:
    stream = RegionStream(shards, 16, regions_per_volume=20, pool_gib=0.5, pool_volumes=8, group=4)
    loader = iter(ThreadLoader(stream, 4, threads, pin_memory=pin))
    out = [next(loader) for _ in range(n)]
    loader.close()
    return out


def main(shards: str) -> None:
    if not torch.cuda.is_available():  # the CPU rehearsal of make gpu-check (TINY=1)
        print("device feed: not checked, no CUDA here")
        return
    host = batches(shards, 12, 0, pin=False)
    torch.cuda.set_sync_debug_mode("error")  # a copy from pageable memory or a hidden host sync raises here
    try:
        device = batches(shards, 12, 0, pin=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for h, d in zip(host, device):
        assert d["region"].is_cuda and "_buffer" not in d
        assert torch.equal(d["region"].cpu(), h["region"]) and torch.equal(d["low"].cpu(), h["low"])
    threaded = batches(shards, 40, 3, pin=True)  # three workers sharing the pinned buffers, then a clean stop
    assert all(b["region"].is_cuda and b["region"].shape[0] == 4 for b in threaded)
    print("device feed: 12 batches equal to the host's, no sync; 40 threaded batches on", torch.cuda.get_device_name())


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    main(sys.argv[1])
