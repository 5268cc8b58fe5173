"""Resume compares the new config with the checkpoint's: model / data-contract changes refuse (exit 2, each key
old → new, nothing written), optimisation changes need `resume.allow_changes`, and allowed changes are logged."""

import json

import pytest
from omegaconf import OmegaConf

from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.training.resume_check import ABSENT, check_resume_config, config_changes

MASK = "objective.views.masking.mask_ratio"
LR = "optim.optimizer.lr"


def _config(*overrides) -> dict:
    cfg = load_config("pretrain", ["experiment=demo", "data.shards=/s", "run_dir=/r", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def test_changes_are_listed_key_by_key():
    old, new = _config(), _config("seed=3", "+trainer.new_key=1")
    assert config_changes(old, new) == {"seed": (0, 3), "trainer.new_key": (ABSENT, 1)}


def test_model_and_data_contract_changes_refuse_even_when_allowed():
    old, new = _config(), _config(f"{MASK}=0.5", "data.crop_size=[48,48,48]", "model.num_layers=3")
    with pytest.raises(ValueError) as err:
        check_resume_config(old, new, [MASK, "model", "data"], "last.ckpt")
    lines = str(err.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "data.crop_size",
        "model.img_size",
        "model.num_layers",
        "objective.views.crop_size",
        MASK,
    ]
    assert f"{MASK}: 0.75 → 0.5 (changes the model or the data contract" in str(err.value)


def test_optimisation_changes_need_permission():
    old, new = _config(), _config(f"{LR}=5e-4", "optim.warmup_steps=3")
    with pytest.raises(
        ValueError,
        match=rf"{LR}: 0.001 → 0.0005 \(to change it on resume, add it to "
        rf"resume.allow_changes=\[{LR}\]\)",
    ):
        check_resume_config(old, new, [], "last.ckpt")
    with pytest.raises(ValueError, match=r"written:\n  optim.warmup_steps: 10 → 3 \(to change it[^\n]*$"):
        check_resume_config(old, new, [LR], "last.ckpt")  # the warm-up is not allowed: its line only
    assert check_resume_config(old, new, [LR, "optim.warmup_steps"], "x") == {
        LR: [1e-3, 5e-4],
        "optim.warmup_steps": [10, 3],
    }
    assert check_resume_config(old, new, ["optim"], "x") == {LR: [1e-3, 5e-4], "optim.warmup_steps": [10, 3]}


def test_a_checkpoint_from_before_a_key_was_added_resumes_at_its_neutral_value():
    old, new = _config(), _config()
    del old["optim"]["layer_decay"], old["optim"]["weight_decay_end"], old["optim"]["freeze_last_layer_steps"]
    assert check_resume_config(old, new, [], "x") == {}
    with pytest.raises(ValueError, match=r"optim.layer_decay: '<absent>' → 0.75 \(to change it"):
        check_resume_config(old, _config("optim.layer_decay=0.75"), [], "x")


def test_harmless_changes_need_no_permission_and_are_recorded():
    old, new = (
        _config(),
        _config(
            "trainer.max_steps=600", "data.num_workers=0", "run_dir=/elsewhere", "trainer.keep_last_n=5", "logger=wandb"
        ),
    )
    changes = check_resume_config(old, new, [], "x")
    assert changes["trainer.max_steps"] == [300, 600] and changes["run_dir"] == ["/r", "/elsewhere"]
    assert {"data.num_workers", "trainer.keep_last_n", "logger.wandb.project"} <= changes.keys()


def _args(shard_dir, run, *extra):
    return [
        "pretrain",
        "experiment=demo",
        f"data.shards={shard_dir}",
        f"run_dir={run}",
        "trainer.max_steps=2",
        "trainer.progress_bar=false",
        "trainer.images_every_n_steps=0",
        "data.num_workers=0",
        *extra,
    ]


def _events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_changed_config_refuses_to_resume_unless_allowed(tmp_path, shard_dir, capsys):
    run = tmp_path / "run"
    assert main(_args(shard_dir, run)) == 0
    written = (run / "config.yaml").read_text()

    assert main(_args(shard_dir, run, f"{MASK}=0.5")) == 2
    assert f"{MASK}: 0.75 → 0.5" in capsys.readouterr().err
    assert main(_args(shard_dir, run, f"{LR}=5e-4")) == 2
    assert f"{LR}: 0.001 → 0.0005 (to change it on resume" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == written and not list(run.glob("config.*.yaml"))
    assert [e["event"] for e in _events(run)] == ["start", "end"]

    assert main(_args(shard_dir, run, f"{LR}=5e-4", "trainer.max_steps=3", f"resume.allow_changes=[{LR}]")) == 0
    resume = _events(run)[2]
    assert resume["event"] == "resume" and resume["step"] == 2
    assert resume["changes"] == {LR: [1e-3, 5e-4], "trainer.max_steps": [2, 3], "resume.allow_changes": [[], [LR]]}
    assert _events(run)[-1] == {**_events(run)[-1], "event": "end", "step": 3}
    assert OmegaConf.load(run / "config.yaml").optim.optimizer.lr == 5e-4
    [kept] = run.glob("config.*.yaml")
    assert kept.read_text() == written
