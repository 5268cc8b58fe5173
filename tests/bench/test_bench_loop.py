import json
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO
from voxfm.pretrain.bench.feed import FeedMark, TimedFeed, feed_figures
from voxfm.pretrain.bench.loop import ROWS, bare_view_dtype, format_loop_bench
from voxfm.pretrain.cli.main import main


def test_the_bare_step_takes_half_views_only_where_autocast_does():
    """True-half and DeepSpeed precisions convert the module and the batch, which the bare step does not: it runs
    their module in fp32, so fp16 views would meet fp32 weights outside autocast."""
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision, HalfPrecision, MixedPrecision, Precision

    assert bare_view_dtype(MixedPrecision("bf16-mixed", "cpu"), "bf16-mixed") == torch.float16
    assert bare_view_dtype(MixedPrecision("16-mixed", "cpu"), "16-mixed") == torch.float16
    assert bare_view_dtype(HalfPrecision("bf16-true"), "bf16-true") == torch.float32
    assert bare_view_dtype(DeepSpeedPrecision("bf16-mixed"), "bf16-mixed") == torch.float32
    assert bare_view_dtype(Precision(), "32-true") == torch.float32


def _batch(worker: int, read_bytes: int | None = None, reads: int = 0, b: int = 2) -> dict:
    batch = {"region": torch.zeros(b, 1, 2, 2, 2, dtype=torch.int16), "worker": worker}
    return batch if read_bytes is None else {**batch, "read_bytes": read_bytes, "reads": reads}


def test_a_timed_feed_counts_waits_regions_and_each_workers_reads():
    """Shard bytes and volumes read between two marks, summed over workers from their cumulative reports; a worker
    first heard from between the marks counts from its first report."""
    batches = [_batch(0, 100, 1), _batch(0, 300, 2), _batch(1, 50, 1), _batch(1, 250, 3), _batch(0, 700, 4)]
    feed = TimedFeed(batches)
    it = iter(feed)
    next(it)
    start = feed.mark()
    rest = list(it)
    end = feed.mark()
    assert len(rest) == 4 and feed.first["worker"] == 0 and feed.first["read_bytes"] == 100
    assert start == FeedMark(start.waited, 2, {0: (100, 1)}) and end.regions == 10
    assert end.reads == {0: (700, 4), 1: (250, 3)} and feed.first_reads == {0: (100, 1), 1: (50, 1)}
    figures = feed_figures(start, end, feed.first_reads, host_s=1.0, seconds=1e-6)
    # worker 0: 700 - 100 bytes, 3 volumes; worker 1: 250 - 50 bytes, 2 volumes; 8 regions delivered
    assert figures["shard_gb_per_s"] == round(800 / 1e9 / 1e-6, 3) == 0.8
    assert figures["regions_per_read"] == round(8 / 5, 1)
    assert 0 <= figures["data_wait"] < 0.01


def test_a_feed_without_read_reports_has_no_read_figures_and_its_wait_is_the_time_in_next():
    def slow():
        for _ in range(3):
            time.sleep(0.05)
            yield _batch(0)

    feed = TimedFeed(slow())
    start = feed.mark()
    assert len(list(feed)) == 3
    figures = feed_figures(start, feed.mark(), feed.first_reads, host_s=0.3, seconds=0.3)
    assert figures["shard_gb_per_s"] is None and figures["regions_per_read"] is None
    assert 0.15 <= feed.waited < 0.3 and figures["data_wait"] == round(feed.waited / 0.3, 3)


def test_closing_a_timed_feed_stops_the_loader_behind_it():
    stopped = []

    def loader():
        try:
            while True:
                yield _batch(0)
        finally:
            stopped.append(True)

    feed = TimedFeed(loader())
    next(iter(feed))
    feed.close()
    assert stopped == [True]


def _json_line(out: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["demo", "demo_mim"])
def test_loop_bench_prints_its_table_for_the_cpu_twins(experiment, shard_dir, capsys):
    """The three rows at the same batch, loop / bare from their rates; the real loader waits, the in-memory feed
    does not read."""
    args = [
        "bench",
        "loop",
        f"experiment={experiment}",
        f"shards={shard_dir}",
        "warmup=1",
        "steps=2",
        "data.batch_size=2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("{")  # the JSON line first: Lightning's model summary is not printed
    result = _json_line(out)
    assert result["experiment"] == experiment and result["device"] == "cpu" and result["timer"] == "perf_counter"
    assert result["precision"] == "32-true" and result["steps"] == 2 and result["batch_size"] == 2
    assert result["views_per_step"] == 2
    for name in ROWS:
        row = result[name]
        assert row["samples_per_s"] > 0 and row["step_ms"] > 0 and row["host_peak_gib"] > 0
        assert row["samples_per_s"] == pytest.approx(2 / (row["step_ms"] / 1e3), rel=0.02)
    assert result["bare"]["data_wait"] is None and result["bare"]["shard_gb_per_s"] is None
    assert 0 <= result["loop"]["data_wait"] <= 1 and 0 <= result["synthetic"]["data_wait"] <= 1
    assert result["loop"]["shard_gb_per_s"] >= 0  # the batches carry their worker's reads (data/stream/regions.py)
    assert result["synthetic"]["shard_gb_per_s"] == 0.0  # one batch, read once, before the timed steps
    assert result["synthetic"]["regions_per_read"] is None
    rate = {name: result[name]["samples_per_s"] for name in ROWS}
    assert result["loop_vs_bare"] == round(rate["loop"] / rate["bare"], 2)
    assert result["loop_vs_synthetic"] == round(rate["loop"] / rate["synthetic"], 2)
    assert result["synthetic_vs_bare"] == round(rate["synthetic"] / rate["bare"], 2)
    table = out[out.index(f"{experiment}: ") :].splitlines()
    assert "samples/s" in table[1] and "data wait" in table[1] and "shard GB/s" in table[1]
    assert [line.split()[0] for line in table[2:5]] == ["(a)", "(b)", "(c)"]
    assert table[5].startswith(f"  loop / bare: {result['loop_vs_bare']}x")
    assert format_loop_bench(result, experiment) == "\n".join(table)


@pytest.mark.slow
def test_loop_bench_reports_the_real_loaders_shard_reads(shard_dir, capsys):
    """No pool and one region per volume read: every region delivered costs one read, so regions per read is
    about 1 and the shard GB/s is positive; the in-memory feed reads nothing."""
    args = [
        "bench",
        "loop",
        "experiment=demo",
        f"shards={shard_dir}",
        "warmup=2",
        "steps=4",
        "data.batch_size=2",
        "data.pool_gib=0",
        "data.regions_per_volume=1",
    ]
    assert main(args) == 0
    result = _json_line(capsys.readouterr().out)
    assert result["loop"]["shard_gb_per_s"] > 0 and 0.5 <= result["loop"]["regions_per_read"] <= 2
    assert result["synthetic"]["shard_gb_per_s"] == 0.0


def test_loop_bench_config_errors_exit_2_before_torch_is_imported():
    cases = [
        ["bench", "loop", "experiment=demo", "shards=/s", "steps=0"],
        ["bench", "loop", "experiment=demo"],
        ["bench", "loop", "shards=/s"],
        ["bench", "loop", "experiment=demo", "shards=/s", "trainer.max_steps=ten"],
    ]
    code = (
        "import json, sys; from voxfm.pretrain.cli.main import main; "
        f"rcs = [main(a) for a in {cases!r}]; "
        "print(json.dumps([rcs, 'torch' in sys.modules, 'lightning' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    rcs, torch_loaded, lightning_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert rcs == [2] * len(cases) and not torch_loaded and not lightning_loaded, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "voxfm bench loop: error: steps=0: expected a value >= 1"
    assert lines[1] == "voxfm bench loop: error: missing required setting(s): shards=..."
    assert lines[2].endswith("missing required setting(s): experiment=... (e.g. experiment=demo)")
    assert "invalid configuration: trainer.max_steps='ten': expected int" in lines[3]


def test_loop_bench_needs_a_shard_set_and_steps_the_run_allows(shard_dir, capsys):
    assert main(["bench", "loop", "experiment=demo", "shards=/nonexistent"]) == 2
    assert "data.shards=/nonexistent: 1 of 1 shard(s) not found" in capsys.readouterr().err
    assert main(["bench", "loop", "experiment=demo", f"shards={shard_dir}", "trainer.max_steps=10"]) == 2
    assert capsys.readouterr().err == (
        "voxfm bench loop: error: trainer.max_steps=10: the bench runs warmup + steps "
        "= 25 steps; raise trainer.max_steps or lower steps\n"
    )
