import torch

from voxfm.pretrain.training.checkpoints import find_resume_checkpoint


def _save(path, step):
    torch.save({"global_step": step, "state_dict": {"w": torch.ones(2)}}, path)


def test_fresh_run_has_nothing_to_resume(tmp_path):
    assert find_resume_checkpoint(tmp_path / "missing") == (None, 0)
    assert find_resume_checkpoint(tmp_path) == (None, 0)


def test_newest_readable_checkpoint_wins(tmp_path):
    _save(tmp_path / "step000010.ckpt", 10)
    _save(tmp_path / "last.ckpt", 10)
    assert find_resume_checkpoint(tmp_path) == (tmp_path / "last.ckpt", 10)
    _save(tmp_path / "step000020.ckpt", 20)  # killed before last.ckpt was refreshed
    assert find_resume_checkpoint(tmp_path) == (tmp_path / "step000020.ckpt", 20)
    (tmp_path / "step000020.ckpt").write_bytes(b"truncated")
    (tmp_path / "last.ckpt").write_bytes(b"truncated")
    assert find_resume_checkpoint(tmp_path) == (tmp_path / "step000010.ckpt", 10)
