import json

import pytest
import torch

from voxfm.pretrain.bench.attention import bench_attention, scaled_shape
from voxfm.pretrain.bench.data import bench_data, format_data_bench
from voxfm.pretrain.bench.model import profile_table
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.runtime.timing import time_call

pytestmark = pytest.mark.slow


def test_data_bench_measures_every_format_on_the_same_volumes(shard_dir):
    result = bench_data(str(shard_dir), max_samples=4, repeats=1)
    assert result["n_volumes"] == 4 and result["shard_codec"] == "lz4hc"
    formats = result["formats"]
    assert set(formats) == {"blosc2 zstd", "blosc2 lz4hc", "nibabel .nii.gz"}
    assert all(f["mb_per_s_per_core"] > 0 and f["ratio"] > 1 for f in formats.values())
    assert formats["nibabel .nii.gz"]["speedup"] == 1.0
    table = format_data_bench(result)
    assert all(name in table for name in formats) and "MB/s per core" in table


def test_bench_cli_prints_the_table(shard_dir, capsys):
    assert main(["bench", "data", f"shards={shard_dir}", "max_samples=2", "repeats=1"]) == 0
    out = capsys.readouterr().out
    assert "blosc2 lz4hc" in out and "vs nibabel" in out


def test_data_bench_reports_regions_per_worker_and_cores_per_gpu(shard_dir):
    result = bench_data(str(shard_dir), max_samples=2, repeats=1, region_size=[24, 24, 24], regions_per_volume=4)
    w = result["worker"]
    assert w["region_size"] == [24, 24, 24] and w["regions_per_volume"] == 4
    assert w["regions_per_s_per_worker"] > 0 and w["float_crops_per_s_per_worker"] > 0
    assert w["cores_per_gpu"] == round(9000 / w["regions_per_s_per_worker"], 1)
    assert w["thread_regions_per_s"] > 0 and w["process_regions_per_s"] > 0
    paths = result["cut_paths"]  # the thread loader's line is the host-cut path, beside the device-cut one
    assert w["thread_regions_per_s"] == paths["host_cut"]["regions_per_s"]
    assert all(paths[p]["cpu_ms_per_region"] > 0 and paths[p]["h2d_mb_per_region"] > 0 for p in paths)
    table = format_data_bench(result)
    assert "cores per GPU" in table and "data.loader=thread" in table and "device-cut" in table


def _json_line(out: str) -> dict:
    """The result line: a compiled step reports its compile time on lines of its own before it."""
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def test_model_bench_prints_voxfm_next_to_monai_on_cpu(capsys):
    """compile=false: the eager column and the reference only (inductor takes tens of seconds on CPU)."""
    for experiment, reference in (("demo", "MONAI MaskedAutoEncoderViT"), ("demo_mim", "MONAI DynUNet")):
        args = [
            "bench",
            "model",
            f"experiment={experiment}",
            "warmup=1",
            "steps=1",
            "data.batch_size=2",
            "compile=false",
        ]
        assert main(args) == 0
        out = capsys.readouterr().out
        result = _json_line(out)
        assert result["experiment"] == experiment and result["device"] == "cpu"
        assert result["timer"] == "perf_counter" and result["steps"] == 1
        assert result["reference"]["name"].startswith(reference)
        for row in (result["eager"], result["reference"]):
            assert row["samples_per_s"] > 0 and row["gflop_per_step"] > 0 and 0 < row["mfu"] < 1
        assert result["eager"]["views_ms"] > 0 and result["eager"]["compile_s"] is None
        assert result["compiled"] is None and result["compiled_vs_eager"] is None
        assert result["ratio_samples_per_s"] == round(
            result["eager"]["samples_per_s"] / result["reference"]["samples_per_s"], 2
        )
        assert "voxfm / MONAI" in out and "samples/s" in out and "MFU" in out and "not run (compile=false)" in out


def test_model_bench_times_eager_and_compiled_in_one_run(capsys):
    """The default: eager and compiled columns of the same step beside MONAI, the compile time on its own; the
    compiled step does the same work (FLOPs counted on it, run eagerly)."""
    args = ["bench", "model", "experiment=demo", "warmup=1", "steps=2", "data.batch_size=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    result = _json_line(out)
    eager, compiled, reference = result["eager"], result["compiled"], result["reference"]
    for row in (eager, compiled, reference):
        assert row["samples_per_s"] > 0 and row["step_ms"] > 0
    assert compiled["gflop_per_step"] == eager["gflop_per_step"] > 0
    assert compiled["compile_s"] > 0 and eager["compile_s"] is None
    assert result["compiled_vs_eager"] == round(compiled["samples_per_s"] / eager["samples_per_s"], 2)
    assert result["vs_reference"] == {
        c: round(result[c]["samples_per_s"] / reference["samples_per_s"], 2) for c in ("eager", "compiled")
    }
    assert result["ratio_samples_per_s"] == result["vs_reference"]["compiled"]  # the headline: the compiled step
    table = out[out.index("demo: ") :]
    assert "voxfm eager" in table and "voxfm compiled" in table and "compile s" in table
    assert "compiled / eager" in table


def test_model_bench_profiles_the_step_on_request(capsys):
    """profile=N: up to N operator rows after the table, out of the JSON line; asked for more rows than the step has
    operators, the matmuls of the ViT are among them whatever the machine's load (rows are ranked by time)."""
    assert (
        main(
            [
                "bench",
                "model",
                "experiment=demo",
                "warmup=1",
                "steps=1",
                "data.batch_size=2",
                "profile=1000",
                "compile=false",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert "profile" not in json.loads(lines[0])
    start = next(i for i, line in enumerate(lines) if line.startswith("profile of voxfm's eager step"))
    rules = [i for i, line in enumerate(lines) if i > start and line.strip() and set(line.strip()) <= {"-", " "}]
    rows = lines[rules[1] + 1 : rules[2]]  # the table: rule, header, rule, rows, rule
    assert 5 < len(rows) < 1000 and any("aten::mm" in r or "aten::addmm" in r for r in rows)


def test_profile_table_keeps_the_rows_asked_for():
    a = torch.ones(8, 8)
    table = profile_table(lambda: torch.relu(a @ a + 1), torch.device("cpu"), rows=2, steps=1, warmup=0)
    lines = table.splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip() and set(line.strip()) <= {"-", " "}]
    assert table.startswith("1 steps, by self_cpu_time_total") and rules[2] - rules[1] - 1 == 2


def test_model_bench_needs_an_experiment_and_its_required_settings(capsys):
    assert main(["bench", "model"]) == 2
    assert "experiment=..." in capsys.readouterr().err
    assert main(["bench", "model", "experiment=demo_distill"]) == 2  # distillation's teacher: one line, no traceback
    err = capsys.readouterr().err.strip()
    assert err.endswith("missing required setting(s): objective.loss.teacher=...") and "\n" not in err


def test_ingest_bench_times_voxfm_and_monai_on_the_same_files(phantom_dir, capsys):
    assert main(["bench", "ingest", f"input={phantom_dir}", "max_volumes=3", "repeats=1"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[0])
    assert result["volumes"] == 3 and len(result["per_volume"]) == 3
    assert all(r["voxfm_s"] > 0 and r["monai_s"] > 0 for r in result["per_volume"])
    ratio = sum(r["monai_s"] for r in result["per_volume"]) / sum(r["voxfm_s"] for r in result["per_volume"])
    assert abs(result["speedup"] - ratio) < 0.05  # the summary is the per-volume figures' ratio
    assert result["storage_vs_nii_gz"] > 1.0  # the payload stays smaller than .nii.gz of the same arrays
    assert "MONAI LoadImage → Orientation → Spacing" in out


def test_data_bench_takes_the_regions_an_experiment_cuts(shard_dir, capsys):
    from hydra.utils import instantiate

    from voxfm.pretrain.cli.compose import load_config

    assert main(["bench", "data", f"shards={shard_dir}", "experiment=demo_simclr", "repeats=1", "max_samples=2"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    exp = load_config("pretrain", ["experiment=demo_simclr", f"data.shards={shard_dir}", "run_dir=x"])
    needed = list(instantiate(exp.objective.views).region_size_needed())
    assert result["experiment"] == "demo_simclr" and result["worker"]["region_size"] == needed
    assert result["worker"]["regions_per_volume"] == exp.data.regions_per_volume


def test_one_timer_counts_warmup_and_timed_calls():
    calls = []
    assert time_call(lambda: calls.append(1), "cpu", warmup=2, steps=3) >= 0 and len(calls) == 5
    assert time_call(lambda: calls.append(1), "cpu", steps=4, reduce="best") >= 0 and len(calls) == 9
    with pytest.raises(ValueError, match="reduce='median'"):
        time_call(lambda: None, "cpu", reduce="median")


def test_attention_bench_times_every_backend_and_picks_the_fastest_per_shape():
    """A row per (shape, backend); a backend the device lacks is reported, not raised; shapes shrink batch first."""
    shapes = {"short": [64, 2, 16, 8], "long": [2, 2, 64, 8]}
    result = bench_attention(
        shapes, warmup=1, steps=2, scale=1 / 32, backends=["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]
    )
    rows = {(r["shape"], r["backend"]): r for r in result["rows"]}
    assert len(result["rows"]) == 6 and {s for s, _ in rows} == set(shapes)
    assert rows["short", "MATH"]["size"] == [2, 2, 16, 8] and rows["long", "MATH"]["size"] == [1, 2, 4, 8]
    assert "unavailable" in rows["short", "EFFICIENT_ATTENTION"]  # a CUDA kernel, on CPU
    for shape in shapes:
        timed = {b: r for (s, b), r in rows.items() if s == shape and "ms" in r}
        assert set(timed) == {"FLASH_ATTENTION", "MATH"} and all(r["ms"] > 0 for r in timed.values())
        assert result["best"][shape] == min(timed, key=lambda b: timed[b]["ms"])
    assert scaled_shape([1024, 12, 54, 64], 1 / 128) == (8, 12, 54, 64)
    with pytest.raises(ValueError, match="backends"):
        bench_attention(shapes, backends=["FLASH"])


def test_attention_bench_cli_prints_the_table_for_the_configured_shapes(capsys):
    assert main(["bench", "attention", "scale=0.002", "warmup=0", "steps=1"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[0])
    shapes = {"mae_vit_b_encoder_96_p16", "mae_vit_b_decoder_96_p16", "vit_b_160_p8"}
    assert set(result["best"]) == shapes and set(result["best"].values()) <= {"FLASH_ATTENTION", "MATH"}
    assert len(result["rows"]) == 2 * len(shapes) and result["dtype"] == "float32"
    assert "fastest" in out and "TFLOP/s" in out
