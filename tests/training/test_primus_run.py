"""demo_primus (a tiny Primus MAE): trains, exports as format=full, and seeds a new run with init_from."""

from voxfm.pretrain.cli.main import main


def test_demo_primus_trains_exports_and_seeds_a_new_run(shard_dir, tmp_path, capsys):
    common = [
        "experiment=demo_primus",
        f"data.shards={shard_dir}",
        "data.num_workers=0",
        "trainer.progress_bar=false",
        "trainer.images_every_n_steps=0",
        "trainer.log_every_n_steps=2",
    ]
    assert main(["pretrain", *common, f"run_dir={tmp_path / 'run'}", "trainer.max_steps=4"]) == 0
    assert main(["export", f"checkpoint={tmp_path / 'run'}", "format=full", f"output={tmp_path / 'full'}"]) == 0
    assert {p.name for p in (tmp_path / "full").iterdir()} >= {"full.json", "model.safetensors", "README.md"}
    assert "MONAI (1.6.1) has no Primus" in (tmp_path / "full" / "README.md").read_text()
    assert main(["export", f"checkpoint={tmp_path / 'run'}", f"output={tmp_path / 'monai'}"]) == 2
    assert "format=monai: voxfm.models.primus.Primus exports as" in capsys.readouterr().err
    assert (
        main(
            [
                "pretrain",
                *common,
                f"run_dir={tmp_path / 'seeded'}",
                f"init_from={tmp_path / 'full'}",
                "trainer.max_steps=6",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "starting from" in out and "at step 4" in out and "finished at step 6" in out


def test_the_contrastive_objectives_train_primus(shard_dir, tmp_path):
    common = [
        f"data.shards={shard_dir}",
        "data.num_workers=0",
        "trainer.progress_bar=false",
        "model=primus_tiny",
        "trainer.images_every_n_steps=0",
        "trainer.max_steps=2",
    ]
    assert main(["pretrain", "experiment=demo_simclr", *common, f"run_dir={tmp_path / 'simclr'}"]) == 0
    assert (
        main(
            [
                "pretrain",
                "experiment=demo_mae_contrastive",
                *common,
                "objective.views.masking.patch_size=8",
                f"run_dir={tmp_path / 'mae_contrastive'}",
            ]
        )
        == 0
    )
