"""One copy from decoded volume to device (data/stream/device_feed.py): regions stacked straight into reused pinned
buffers; on CUDA, the copy one batch ahead on a side stream."""

import subprocess
import sys
import threading

import pytest
import torch

from tests.conftest import REPO
from voxfm.data.stream.batches import collate_regions
from voxfm.data.stream.device_feed import PinnedBuffers, collate_into


def _samples(n, dtype=torch.int16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "region": torch.randint(-1000, 1000, (1, 6, 6, 6), generator=g).to(dtype),
            "low": -1000.0,
            "high": 1000.0,
            "modality": "CT",
            "source": 0,
            "volume": f"v{i % 3}",
            "worker": 1,
            "skipped": 2,
            "read_bytes": 10 * i,
            "reads": i,
        }
        for i in range(n)
    ]


def test_collate_into_writes_the_batch_of_collate_regions_into_a_reused_buffer():
    buffers = PinnedBuffers(limit=2, pin=False)
    samples = _samples(4)
    batch, expected = collate_into(samples, buffers), collate_regions(samples)
    assert torch.equal(batch["region"], expected["region"]) and batch["region"].dtype == torch.int16
    assert batch["region"].data_ptr() == batch["_buffer"].data_ptr()  # the buffer itself: no second copy
    assert {k: v for k, v in batch.items() if k not in ("region", "_buffer", "low", "high")} == {
        k: v for k, v in expected.items() if k not in ("region", "low", "high")
    }
    assert batch["volumes"] == 3 and batch["read_bytes"] == 30 and batch["reads"] == 3
    buffers.give(batch["_buffer"])
    again = collate_into(_samples(4, seed=1), buffers)
    assert again["_buffer"].data_ptr() == batch["_buffer"].data_ptr()  # reused, not reallocated
    mixed = collate_into(_samples(2) + _samples(2, torch.float32), buffers)  # int16 CT with float32 MR: promoted
    assert mixed["region"].dtype == torch.float32 and buffers.made == 2


def test_a_worker_waits_for_a_free_buffer_and_stops_when_told():
    buffers = PinnedBuffers(limit=1, pin=False)
    held = buffers.take(64)
    stop, got = threading.Event(), []
    waiter = threading.Thread(target=lambda: got.append(buffers.take(64, stop)))
    waiter.start()
    waiter.join(timeout=0.3)
    assert waiter.is_alive()  # all buffers in use: it waits
    buffers.give(held)
    waiter.join(timeout=5)
    assert got and got[0].data_ptr() == held.data_ptr()
    stop.set()
    assert buffers.take(64, stop) is None  # the only buffer is out again: a stopped loader does not hang


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side-stream copy needs CUDA (make gpu-check)")
def test_on_cuda_batches_arrive_on_the_device_equal_to_the_host_batches(shard_dir):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_device_feed.py"), str(shard_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "equal to the host's" in out.stdout, out.stderr


def test_a_larger_free_buffer_serves_a_smaller_batch_and_a_too_small_one_is_replaced():
    buffers = PinnedBuffers(limit=2, pin=False)
    small, large = buffers.take(100), buffers.take(1000)
    assert small.numel() == 128 and large.numel() == 1024  # power-of-two sizes
    buffers.give(large)
    buffers.give(small)
    assert buffers.take(120).data_ptr() == small.data_ptr()  # the smallest that fits
    assert buffers.take(600).data_ptr() == large.data_ptr()
    buffers.give(small)
    bigger = buffers.take(5000)  # at the limit, nothing fits: the small one is dropped for a larger one
    assert bigger.numel() == 8192 and buffers.made == 2 and buffers.free == []
