"""Streaming at scale: weighted sources, exact passes by rank × worker, HTTP and pipe: shards, damaged data."""

import functools
import http.server
import io
import json
import tarfile
import threading
from collections import Counter

import pytest

from voxfm.data.ingest.run import run_shard
from voxfm.data.phantoms import write_phantoms
from voxfm.data.stream.batches import collate_regions
from voxfm.data.stream.regions import RegionStream
from voxfm.data.stream.sources import epoch_samples


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """12 phantoms, one or two per shard: several shards."""
    raw, out = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("many")
    write_phantoms(raw, n=12, seed=1, shape=(40, 40, 32))
    for label in raw.glob("*_label.nii.gz"):
        label.unlink()
    report = run_shard(str(raw), str(out), {"min_shape": 8}, shard_max_mb=0.02, progress=False, workers=1)
    assert report["n_sharded"] == 12 and report["n_shards"] >= 5
    return out


def _keys(out):
    return [s["key"] for s in json.loads((out / "index.json").read_text())["samples"]]


def _slot_samples(stream, rank, world, worker, n_workers, monkeypatch):
    monkeypatch.setattr(RegionStream, "_rank_world", staticmethod(lambda: (rank, world)))
    return [sample["__key__"] for _, sample in stream.samples(worker, n_workers)]


@pytest.mark.parametrize("use_pattern", [False, True])
def test_epoch_mode_splits_a_pass_exactly_over_2_ranks_x_2_workers(many_shards, use_pattern, monkeypatch):
    # a folder: at least as many shards as slots (whole shards per slot); one shard: every slot reads it and
    # keeps every 4th sample
    shards = str(many_shards / "shard-{000000..000000}.tar") if use_pattern else str(many_shards)
    stream = RegionStream(shards, 16, resampled=False)
    stream_pass = functools.partial(epoch_samples, passes=1)
    monkeypatch.setattr("voxfm.data.stream.regions.epoch_samples", stream_pass)  # one pass, so each slot's stream ends
    seen = Counter()
    for rank in range(2):
        for worker in range(2):
            seen.update(_slot_samples(stream, rank, 2, worker, 2, monkeypatch))
    expected = (
        set(_keys(many_shards))
        if not use_pattern
        else {
            m.name.rsplit(".", 1)[0] for m in tarfile.open(many_shards / "shard-000000.tar") if m.name.endswith(".json")
        }
    )
    assert set(seen) == expected and set(seen.values()) == {1}  # every sample exactly once


def test_weighted_sources_mix_in_their_proportions(many_shards, shard_dir):
    stream = RegionStream(
        None,
        16,
        sources=[
            {"shards": str(many_shards), "weight": 0.7, "name": "a"},
            {"shards": str(shard_dir), "weight": 0.3, "name": "b"},
        ],
    )
    draws = [source for (source, _), _ in zip(stream.samples(0), range(2000))]
    share = draws.count(0) / len(draws)
    assert len(draws) == 2000 and abs(share - 0.7) < 0.03, share
    regions = stream.worker_stream(0)
    batch = collate_regions([next(regions) for _ in range(8)])
    assert len(batch["source"]) == 8 and set(batch["source"]) <= {0, 1}  # Python ints: bookkeeping on the host
    assert all(type(s) is int for s in batch["source"]) and type(batch["worker"]) is int
    with pytest.raises(ValueError, match="exactly one of data.shards"):
        RegionStream(str(shard_dir), 16, sources=[{"shards": str(shard_dir)}])
    with pytest.raises(ValueError, match="names"):
        RegionStream(None, 16, sources=[{"shards": str(shard_dir)}, {"shards": str(shard_dir)}])


def test_shards_stream_over_http_and_from_pipe_commands(shard_dir):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shard_dir))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        local = set(_keys(shard_dir))
        for shards in (url, url + "shard-{000000..000000}.tar", f"pipe:cat {shard_dir}/shard-000000.tar"):
            stream = RegionStream(shards, 16, resampled=False)
            samples = stream.samples(0)
            got = {next(samples)[1]["__key__"] for _ in range(len(local))}
            assert got == local, shards
            region = next(stream.worker_stream(0))
            assert region["region"].shape == (1, 16, 16, 16)
    finally:
        server.shutdown()


def _damage(shard_dir, tmp_path):
    """A copy of the shard set whose shard holds one sample with a corrupt payload and ends truncated."""
    out = tmp_path / "damaged"
    out.mkdir()
    (out / "index.json").write_text((shard_dir / "index.json").read_text())
    with tarfile.open(shard_dir / "shard-000000.tar") as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, data in members:
            if m.name.endswith(".image.b2") and m.name.startswith(members[0][0].name.split(".")[0]):
                data = b"not blosc2" * 10
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    raw = buf.getvalue()
    (out / "shard-000000.tar").write_bytes(raw[: int(len(raw) * 0.8)])  # truncated in the last samples
    return out


def test_damaged_samples_and_truncated_shards_are_skipped_and_counted(shard_dir, tmp_path):
    stream = RegionStream(str(_damage(shard_dir, tmp_path)), 16, regions_per_volume=1, shuffle_buffer=1)
    regions = stream.worker_stream(0)
    got = [next(regions) for _ in range(20)]
    assert all(r["region"].shape == (1, 16, 16, 16) for r in got)
    assert got[-1]["skipped"] >= 2  # the corrupt payload, and the truncated end of every read of the shard
    assert collate_regions(got[-4:])["skipped"] == got[-1]["skipped"]


def test_pretraining_on_two_sources_one_damaged_completes_and_reports_skips_and_mix(shard_dir, tmp_path, capsys):
    from voxfm.pretrain.cli.main import main

    run = tmp_path / "run"
    damaged = _damage(shard_dir, tmp_path)
    sources = f"[{{shards:'{damaged}',weight:0.5,name:damaged}},{{shards:'{shard_dir}',name:clean}}]"
    assert (
        main(
            [
                "pretrain",
                "experiment=demo",
                f"data.sources={sources}",
                f"run_dir={run}",
                "trainer.max_steps=6",
                "data.regions_per_volume=1",
                "data.shuffle_buffer=1",
                "data.num_workers=1",
                "trainer.log_every_n_steps=1",
                "trainer.progress_bar=false",
            ]
        )
        == 0
    )
    assert "damaged shard read(s) or sample(s)" in capsys.readouterr().out
    rows = (run / "metrics" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("data/skipped_samples")
    skipped = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert skipped and max(skipped) >= 1
    header = rows[0].split(",")
    assert "data/modality/CT" in header and "data/modality/MR" in header  # the realised mix by modality
    mix = [
        float(r.split(",")[header.index("data/mix/damaged")])
        for r in rows[1:]
        if r.split(",")[header.index("data/mix/damaged")]
    ]
    assert mix and 0 < mix[-1] < 1 and "data/mix/clean" in header  # ... and by source
