"""`voxfm <command> -m key=a,b`: one job per combination, each in its own run_dir named after its swept values."""

import pytest

from voxfm.pretrain.cli.main import main
from voxfm.pretrain.cli.sweep import jobs
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint


def test_a_sweep_is_the_product_of_its_swept_values_each_in_its_own_folder():
    got = jobs(["-m", "experiment=demo", "optim.optimizer.lr=1e-3,3e-4", "seed=0,1", "run_dir=runs/s"])
    assert len(got) == 4 and got[0] == [
        "experiment=demo",
        "optim.optimizer.lr=0.001",
        "seed=0",
        "run_dir=runs/s/optim.optimizer.lr-0.001__seed-0",
    ]
    assert len({job[-1] for job in got}) == 4


@pytest.mark.parametrize(
    "overrides, words",
    [(["-m", "seed=0,1"], "give run_dir or output"), (["-m", "seed=0", "run_dir=r"], "no swept key")],
)
def test_a_sweep_without_its_folder_or_a_swept_key_exits_2(overrides, words, capsys):
    assert main(["pretrain", *overrides]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.slow
def test_two_learning_rates_make_two_finished_run_dirs(tmp_path, shard_dir, capsys):
    args = ["pretrain", "-m", "experiment=demo", "optim.optimizer.lr=1e-3,3e-4", f"data.shards={shard_dir}"]
    args += [f"run_dir={tmp_path}", "trainer.max_steps=3", "trainer.progress_bar=false", "data.num_workers=0"]
    assert main([*args, "trainer.images_every_n_steps=0"]) == 0
    assert "sweep of 2 job(s): all finished" in capsys.readouterr().out
    for lr in ("0.001", "0.0003"):
        assert find_resume_checkpoint(tmp_path / f"optim.optimizer.lr-{lr}" / "checkpoints")[1] == 3


@pytest.mark.parametrize(
    "launcher, words",
    [
        (["hydra/launcher=joblib_nope"], "Could not find 'hydra/launcher/joblib_nope'"),
        (["hydra/launcher=submitit_local", "hydra.launcher.bogus=1"], "Could not override 'hydra.launcher.bogus'"),
    ],
)
def test_an_unknown_launcher_or_setting_is_refused_in_one_line_by_hydra(launcher, words, tmp_path, capsys):
    assert main(["export", "-m", *launcher, "format=monai,nnunet", "checkpoint=x.ckpt", f"output={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_submitit_local_runs_each_job_in_its_own_process(tmp_path, shard_dir, capsys):
    args = ["pretrain", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "experiment=demo"]
    args += ["seed=0,1", f"data.shards={shard_dir}", f"run_dir={tmp_path}", "trainer.max_steps=2"]
    assert main([*args, "trainer.progress_bar=false", "data.num_workers=0"]) == 0
    out = capsys.readouterr().out
    assert out.count("(submitit_local): ") == 2 and "sweep of 2 job(s): all finished" in out
    assert (tmp_path / ".submitit").is_dir() and not list(tmp_path.rglob(".hydra"))  # Hydra's plugin ran each job
    for seed in (0, 1):
        assert find_resume_checkpoint(tmp_path / f"seed-{seed}" / "checkpoints")[1] == 2
