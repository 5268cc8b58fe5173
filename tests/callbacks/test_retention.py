"""Retention: the newest `trainer.keep_last_n` periodic checkpoints plus `keep_every_n_steps` milestones stay,
`last.ckpt` and half-written `.tmp` files are never touched, and resume still finds the newest."""

from voxfm.pretrain.callbacks.retention import prune_checkpoints, to_prune
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint


def test_which_steps_go():
    steps = list(range(1, 11))
    assert to_prune(steps, 3, 4) == {1, 2, 3, 5, 6, 7}  # kept: 4, 8 (milestones), 8, 9, 10 (newest)
    assert to_prune(steps, 3, None) == set(range(1, 8))
    assert to_prune(steps, None, 4) == set() and to_prune([2, 4], 3, 4) == set()


def test_pruning_leaves_last_tmp_and_other_files(tmp_path):
    for step in range(1, 11):
        (tmp_path / f"step{step:06d}.ckpt").write_bytes(b"x")
    ds = tmp_path / "step000002.ckpt"  # a DeepSpeed folder and its universal conversion go together
    ds.unlink()
    (ds / "checkpoint").mkdir(parents=True)
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
