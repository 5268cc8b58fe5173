"""Shard sets that used to stop or stall a run (issue 26): a float sample with NaN voxels (skipped, not a diverged
run), a set with no sample at all (an error naming its shards, not a silent hang), and a one-volume set (warned
about, held once)."""

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from tests.conftest import REPO
from voxfm.data.ingest import payload
from voxfm.data.stream.regions import RegionStream
from voxfm.data.stream.samples import load_volume

ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
TIMEOUT_S = 120  # a run that finds no sample must end well within this; before issue 26 it never did


def _samples(shard_dir) -> list[tuple[str, dict, bytes]]:
    """(key, metadata, payload) of the phantom set's samples (3 CT int16, 3 MR float32)."""
    with tarfile.open(shard_dir / "shard-000000.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    return [(k[:-5], json.loads(files[k]), files[k[:-5] + ".image.b2"]) for k in sorted(files) if k.endswith(".json")]


def _shard_set(shard_dir, out, samples, n_samples=None):
    """A one-shard set of `samples`, with the phantom set's index.json config; its index lists `n_samples`
    (default: how many there are) for the shard."""
    out.mkdir()
    with tarfile.open(out / "shard-000000.tar", "w") as tar:
        for key, meta, frame in samples:
            for ext, data in (("json", json.dumps(meta).encode()), ("image.b2", frame)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    index = json.loads((shard_dir / "index.json").read_text())
    count = len(samples) if n_samples is None else n_samples
    (out / "index.json").write_text(json.dumps({**index, "shards": [{"name": "shard-000000.tar", "n_samples": count}]}))
    return out


def _nan_sample(shard_dir):
    """An MR sample (float32) with every 4th z-slice NaN: every region cut from it holds NaN voxels."""
    key, meta, frame = next(s for s in _samples(shard_dir) if s[1]["modality"] == "MR")
    vol = payload.decode(frame, meta["shape"]).copy()
    vol[:, :, ::4] = np.nan
    return "nanvol", meta, payload.encode(vol)


def _pretrain(shards, run_dir, *extra) -> int:
    from voxfm.pretrain.cli.main import main

    return main(
        [
            "pretrain",
            "experiment=demo",
            f"data.shards={shards}",
            f"run_dir={run_dir}",
            "trainer.progress_bar=false",
            "trainer.images_every_n_steps=0",
            "data.num_workers=0",
            *extra,
        ]
    )


def test_a_float_volume_with_non_finite_voxels_is_refused_where_it_is_decoded(shard_dir):
    key, meta, frame = _nan_sample(shard_dir)
    with pytest.raises(ValueError, match=r"non-finite voxels: \d+ of \d+ are NaN or ±inf"):
        load_volume({"json": json.dumps(meta).encode(), "image.b2": frame}, 16)
    vol = np.zeros(meta["shape"], np.float16)
    vol[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="non-finite voxels: 1 of"):
        load_volume({"json": json.dumps(meta).encode(), "image.b2": payload.encode(vol)}, 16)
    vol[1, 2, 3] = np.finfo(np.float16).max  # finite extremes are data, not damage
    assert load_volume({"json": json.dumps(meta).encode(), "image.b2": payload.encode(vol)}, 16).array.max() > 6e4


@pytest.mark.slow
def test_a_normalisation_window_float32_cannot_tell_apart_is_refused():
    from voxfm.data.stream.samples import sample_meta

    meta = {"modality": "CT", "normalisation": {"low": -1000.0, "high": -999.99999}, "shape": [4, 4, 4]}
    with pytest.raises(ValueError, match="expected finite numbers, low < high"):  # (x - low) / (high - low) = 0/0
        sample_meta(json.dumps(meta).encode())


def test_a_nan_sample_is_skipped_and_counted_instead_of_stopping_the_run(shard_dir, tmp_path, capsys, caplog):
    """Two samples, one with NaN voxels, held in every batch: before, every step was non-finite and the run stopped
    as diverged (exit 3), on every rerun. Now that sample is skipped with its reason and the run completes."""
    ct = next(s for s in _samples(shard_dir) if s[1]["modality"] == "CT")
    shards = _shard_set(shard_dir, tmp_path / "nan", [ct, _nan_sample(shard_dir)])
    code = _pretrain(
        shards,
        tmp_path / "run",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=2",
        "trainer.checkpoint_every_n_steps=4",
        "trainer.max_nonfinite_steps=2",
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert "sample nanvol of " in caplog.text and "non-finite voxels" in caplog.text
    skipped = re.search(r"rank 0 skipped (\d+) damaged shard read\(s\) or sample\(s\)", out.out)
    assert skipped and int(skipped[1]) >= 1
    rows = (tmp_path / "run" / "metrics" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [r.split(",")[header.index("train/skipped_steps")] for r in rows[1:]]
    assert [float(v) for v in logged if v] == [0.0, 0.0]  # no step skipped for a non-finite loss


def _subprocess(shards, run_dir, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "voxfm",
        "pretrain",
        "experiment=demo",
        f"data.shards={shards}",
        f"run_dir={run_dir}",
        "trainer.max_steps=2",
        "trainer.progress_bar=false",
        *extra,
    ]


@pytest.mark.slow
def test_a_shard_set_whose_index_lists_no_samples_is_refused_naming_its_shards(shard_dir, tmp_path):
    """An empty tar, and an index that says so: refused by the config check (exit 2) instead of a stream that read
    the empty shard forever at full CPU."""
    shards = _shard_set(shard_dir, tmp_path / "empty", [])
    run = subprocess.run(
        _subprocess(shards, tmp_path / "run"), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"data.shards={shards}: its index.json lists no samples in its 1 shard(s) (shard-000000.tar)" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "listed, extra",
    [
        ("index", ("data.num_workers=1",)),  # an index that lists 3 samples the tar does not hold; a thread worker
        ("pattern", ("data.num_workers=0", "data.resampled=false")),  # no index (a brace pattern); exact passes
    ],
)
def test_empty_shards_the_index_does_not_reveal_stop_the_run_naming_them(shard_dir, tmp_path, listed, extra):
    shards = _shard_set(shard_dir, tmp_path / "empty", [], n_samples=3)
    given = shards if listed == "index" else f"'{shards / 'shard-{000000..000000}.tar'}'"  # quoted for Hydra
    start = time.monotonic()
    run = subprocess.run(
        _subprocess(given, tmp_path / "run", *extra),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert run.returncode == 2 and time.monotonic() - start < TIMEOUT_S, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert "voxfm pretrain: error: 1000 shard reads in a row brought this data worker no sample" in last, last
    assert f"from 1 shard(s): {shards / 'shard-000000.tar'}" in last
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_sigterm_while_the_stream_waits_for_a_first_sample_ends_the_run(shard_dir, tmp_path):
    """SIGTERM sent while the run waits for its first batch from empty shards: the process ends, it does not spin
    (`Preemption` stops a run that has not stepped yet at once; the wait is bounded besides)."""
    shards = _shard_set(shard_dir, tmp_path / "empty", [], n_samples=3)
    log = open(tmp_path / "run.log", "w")  # a file: a pipe nobody reads while polling could fill and stall the run
    out = tmp_path / "run.out"
    # the empty-read bound lifted (thread workers share the module): only the signal can end this wait. Left at
    # 1,000 reads, a loaded machine sometimes reached it (exit 2) before the signal arrived
    args = _subprocess(shards, tmp_path / "run", "data.num_workers=1", "data.loader=thread")[3:]
    unbounded = (
        "import voxfm.data.stream.skips as skips; skips.MAX_SKIPPED_IN_A_ROW = 10**12; "
        f"from voxfm.pretrain.cli.main import main; raise SystemExit(main({args!r}))"
    )
    with open(out, "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-c", unbounded], cwd=REPO, env=ENV, stdout=stdout, stderr=log)
        deadline = time.monotonic() + TIMEOUT_S
        while "global batch" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the data wait starts right after this line
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("SIGTERM did not end a run waiting for a sample from empty shards")
    log.close()
    # before training starts SIGTERM keeps its default effect (-15); once the fit has begun it stops the run at once
    # with exit 75, as a preempted run with nothing new to save
    assert proc.returncode in (75, -signal.SIGTERM)
    if proc.returncode == 75:
        assert "stopped by SIGTERM at step 0; checkpoint none new" in (tmp_path / "run.log").read_text()


def test_a_one_volume_set_is_warned_about_once_and_the_pool_holds_it_once(shard_dir, tmp_path, caplog):
    shards = _shard_set(shard_dir, tmp_path / "one", _samples(shard_dir)[:1])
    caplog.set_level(logging.INFO, logger="voxfm.data")
    stream = RegionStream(str(shards), 16, regions_per_volume=8, pool_gib=1, pool_volumes=48, group=4)
    regions = stream.worker_stream(0)
    keys = {next(regions)["volume"] for _ in range(40)}  # 5 volume reads
    assert len(keys) == 1
    warned = [r.getMessage() for r in caplog.records if "distinct volume" in r.getMessage()]
    assert warned == [
        "voxfm: the shard set has 1 distinct volume(s), fewer than data.pool_volumes (48): batches will repeat "
        "volumes (each draws from at most 1); each data worker's pool holds at most 1"
    ]
    assert "data worker 0 holds 1 decoded volumes" in caplog.text  # not 48 copies of it
    assert "fewer than a batch" not in caplog.text  # the pool is not what to raise here
    many = RegionStream(str(shard_dir), 16, pool_gib=1, pool_volumes=6, group=4)  # as many volumes as the pool
    assert many.pool_volumes == 6 and len([r for r in caplog.records if "distinct volume" in r.getMessage()]) == 1


@pytest.mark.slow
def test_a_run_on_a_one_volume_set_says_once_that_batches_repeat_it(shard_dir, tmp_path, capsys, caplog):
    shards = _shard_set(shard_dir, tmp_path / "one", _samples(shard_dir)[:1])
    caplog.set_level(logging.INFO, logger="voxfm.data")
    assert _pretrain(shards, tmp_path / "run", "trainer.max_steps=3", "trainer.log_every_n_steps=3") == 0
    assert caplog.text.count("the shard set has 1 distinct volume(s), fewer than data.pool_volumes (48)") == 1
    assert "data worker 0 holds 1 decoded volumes" in caplog.text
