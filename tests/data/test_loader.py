import pytest
import torch

from voxfm.data.stream.loader import ThreadLoader
from voxfm.data.stream.regions import RegionStream


def test_thread_loader_yields_batches_of_regions(shard_dir):
    loader = ThreadLoader(RegionStream(str(shard_dir), 24, regions_per_volume=2), batch_size=3, num_threads=2)
    it = iter(loader)
    batches = [next(it) for _ in range(4)]
    assert all(b["region"].shape == (3, 1, 24, 24, 24) and len(b["modality"]) == 3 for b in batches)
    assert len({b["region"].float().sum().item() for b in batches}) > 1


def test_each_thread_has_its_own_seeded_stream(shard_dir):
    stream = RegionStream(str(shard_dir), 24, regions_per_volume=1, shuffle_buffer=2)
    first = [next(stream.worker_stream(0))["region"] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # a worker's stream replays from its seed
    other = next(stream.worker_stream(1))["region"]
    streams = [stream.worker_stream(w) for w in (0, 1)]
    a = torch.stack([next(streams[0])["region"].float() for _ in range(4)])
    b = torch.stack([next(streams[1])["region"].float() for _ in range(4)])
    assert not torch.equal(a, b) and other.shape == first[0].shape


def test_a_failing_thread_surfaces_in_the_training_loop(shard_dir):
    stream = RegionStream(str(shard_dir), 24)

    def broken(worker, n_workers):
        raise OSError("disk gone")
        yield

    stream.worker_stream = broken
    with pytest.raises(RuntimeError, match="data-loader thread failed") as err:
        next(iter(ThreadLoader(stream, 2, num_threads=1)))
    assert isinstance(err.value.__cause__, OSError)
