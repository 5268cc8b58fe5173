"""Retention: the newest `trainer.keep_last_n` periodic checkpoints plus `keep_every_n_steps` milestones stay,
`last.ckpt` and half-written `.tmp` files are never touched, and resume still finds the newest."""

import torch

from voxfm.pretrain.callbacks.retention import prune_checkpoints, to_prune
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint


def test_which_steps_go():
    steps = list(range(1, 11))
    assert to_prune(steps, 3, 4) == {1, 2, 3, 5, 6, 7}  # kept: 4, 8 (milestones), 8, 9, 10 (newest)
    assert to_prune(steps, 3, None) == set(range(1, 8))
    assert to_prune(steps, None, 4) == set() and to_prune([2, 4], 3, 4) == set()


def _checkpoint(path, step):
    torch.save({"global_step": step, "voxfm_config": {}}, path)


def test_pruning_leaves_last_tmp_and_other_files(tmp_path):
    for step in range(1, 11):
        _checkpoint(tmp_path / f"step{step:06d}.ckpt", step)
    ds = tmp_path / "step000002.ckpt"  # a DeepSpeed folder and its universal conversion go together
    ds.unlink()
    (ds / "checkpoint").mkdir(parents=True)
    _checkpoint(ds / "checkpoint" / "mp_rank_00_model_states.pt", 2)
    (ds / "latest").write_text("checkpoint")
    (tmp_path / "step000002.ckpt.universal").mkdir()
    for name in ("last.ckpt", "step000011.ckpt.tmp", "step000012-v1.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    deleted = prune_checkpoints(tmp_path, 3, 4)
    assert sorted(p.name for p in deleted) == [f"step{s:06d}.ckpt" for s in (1, 2, 3, 5, 6, 7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt",
        "step000004.ckpt",
        "step000008.ckpt",
        "step000009.ckpt",
        "step000010.ckpt",
        "step000011.ckpt.tmp",
        "step000012-v1.ckpt",
    ]


def test_only_what_voxfm_wrote_is_pruned(tmp_path):
    """A user's file under a checkpoint's name, a damaged checkpoint and a link (to a folder) are left alone, and
    do not count among the newest kept."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (1, 2, 3):
        _checkpoint(folder / f"step{step:06d}.ckpt", step)
    (folder / "step000004.ckpt").write_text("my notes")
    (folder / "step000005.ckpt").symlink_to(elsewhere)
    _checkpoint(folder / "step000006.ckpt", 99)  # its content says another step
    assert [p.name for p in prune_checkpoints(folder, 2, None)] == ["step000001.ckpt"]
    assert (folder / "step000004.ckpt").read_text() == "my notes" and (elsewhere / "data").is_dir()
    assert (folder / "step000006.ckpt").exists()


def test_ten_saves_keep_exactly_the_configured_checkpoints(tmp_path, shard_dir):
    run = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "experiment=demo",
                f"data.shards={shard_dir}",
                f"run_dir={run}",
                "trainer.max_steps=10",
                "trainer.checkpoint_every_n_steps=1",
                "trainer.keep_last_n=3",
                "trainer.keep_every_n_steps=4",
                "trainer.progress_bar=false",
                "trainer.images_every_n_steps=0",
                "data.num_workers=0",
            ]
        )
        == 0
    )
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "last.ckpt",
        "step000004.ckpt",
        "step000008.ckpt",
        "step000009.ckpt",
        "step000010.ckpt",
    ]
    assert find_resume_checkpoint(ckpts) == (ckpts / "last.ckpt", 10)
    (ckpts / "last.ckpt").unlink()
    assert find_resume_checkpoint(ckpts) == (ckpts / "step000010.ckpt", 10)
