import json

from pretrain.bench import bench_data, format_data_bench
from pretrain.cli import main


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
    table = format_data_bench(result)
    assert "cores per GPU" in table and "data.loader=thread" in table


def test_model_bench_prints_voxfm_next_to_monai_on_cpu(capsys):
    for experiment, reference in (("demo", "MONAI MaskedAutoEncoderViT"), ("demo_mim", "MONAI DynUNet")):
        args = ["bench", "model", f"experiment={experiment}", "warmup=1", "steps=1", "data.batch_size=2"]
        assert main(args) == 0
        out = capsys.readouterr().out
        result = json.loads(out.splitlines()[0])
        assert result["experiment"] == experiment and result["device"] == "cpu"
        assert result["reference"]["name"].startswith(reference)
        for row in (result["voxfm"], result["reference"]):
            assert row["samples_per_s"] > 0 and row["gflop_per_step"] > 0 and 0 < row["mfu"] < 1
        assert result["ratio_samples_per_s"] == round(result["voxfm"]["samples_per_s"]
                                                      / result["reference"]["samples_per_s"], 2)
        assert "voxfm / MONAI" in out and "samples/s" in out and "MFU" in out


def test_model_bench_profiles_the_step_on_request(capsys):
    """profile=N: N operator rows after the table, out of the JSON line; the matmuls of the ViT are among them."""
    assert main(["bench", "model", "experiment=demo", "warmup=1", "steps=1", "data.batch_size=2", "profile=5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "profile" not in json.loads(lines[0])
    start = next(i for i, line in enumerate(lines) if line.startswith("profile of voxfm's step"))
    rules = [i for i, line in enumerate(lines) if i > start and line.strip() and set(line.strip()) <= {"-", " "}]
    rows = lines[rules[1] + 1:rules[2]]  # the table: rule, header, rule, rows, rule
    assert len(rows) == 5 and any("aten::mm" in r or "aten::addmm" in r for r in rows)


def test_model_bench_needs_an_experiment(capsys):
    assert main(["bench", "model"]) == 2
    assert "experiment=..." in capsys.readouterr().err


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

    from pretrain.config import load_config

    assert main(["bench", "data", f"shards={shard_dir}", "experiment=demo_simclr", "repeats=1", "max_samples=2"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    exp = load_config("pretrain", ["experiment=demo_simclr", f"data.shards={shard_dir}", "run_dir=x"])
    needed = list(instantiate(exp.objective.stage).region_size_needed())
    assert result["experiment"] == "demo_simclr" and result["worker"]["region_size"] == needed
    assert result["worker"]["regions_per_volume"] == exp.data.regions_per_volume
