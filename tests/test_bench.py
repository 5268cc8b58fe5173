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
