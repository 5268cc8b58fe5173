"""Mistakes a new user makes, each refused in one line with exit 2: a shard set's index.json given as data.shards,
fine-tuning on shards without label maps, resharding into an output made with other settings."""

from voxfm.pretrain.cli.main import main


def test_an_index_json_as_data_shards_names_its_folder(tmp_path, shard_dir, capsys):
    args = ["pretrain", "experiment=demo", f"data.shards={shard_dir / 'index.json'}", f"run_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"that is the shard set's index; give its folder: {shard_dir}" in err and len(err.splitlines()) == 1


def test_finetuning_on_shards_without_labels_is_one_line(tmp_path, shard_dir, capsys):
    args = ["finetune", "experiment=demo_finetune", "backbone=none", f"data.shards={shard_dir}", f"run_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no sample has a label map" in err and len(err.splitlines()) == 1


def test_resharding_with_other_settings_names_each_change(tmp_path, phantom_dir, capsys):
    out = tmp_path / "s"
    base = ["shard", f"input={phantom_dir}", f"output={out}", "progress=false", "workers=1"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "preprocess.frames=first"]) == 2
    err = capsys.readouterr().err
    assert "(preprocess.frames: reject → first); use a new output folder" in err and len(err.splitlines()) == 1
