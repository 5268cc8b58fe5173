import numpy as np
import torch

from voxfm.pretrain.callbacks.images import middle_slices, pick_samples, reconstruction_grid


def test_samples_are_picked_across_modalities_first():
    assert pick_samples(["CT", "CT", "MR", "CT", "PET"], 3) == [0, 2, 4]
    assert pick_samples(["CT", "CT", "CT"], 2) == [0, 1]


def test_middle_slices_are_the_three_orthogonal_planes():
    vol = np.zeros((6, 8, 10))
    vol[3, :, :] = 1  # the sagittal middle plane
    axial, coronal, sagittal = middle_slices(vol)
    assert axial.shape == (8, 6) and coronal.shape == (10, 6) and sagittal.shape == (10, 8)
    assert sagittal.min() == 1 and axial[:, 3].min() == 1 and axial.sum() == 8


def test_grid_has_one_row_per_sample_and_nine_tiles_per_row():
    vols = {k: torch.rand(3, 1, 16, 16, 16) for k in ("original", "masked", "reconstruction")}
    grid = reconstruction_grid(vols, [0, 2])
    assert grid.dtype == np.uint8
    scale = grid.shape[0] // (2 * 18)
    assert grid.shape == (2 * 18 * scale, 9 * 18 * scale)


class _Recorder:
    def __init__(self):
        self.calls = []

    def log_image(self, **kwargs):
        self.calls.append(kwargs)


def test_callback_writes_a_png_and_logs_it_to_wandb(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from voxfm.pretrain.callbacks.images import ReconstructionImages
    from voxfm.pretrain.objectives.protocol import ObjectiveDeclaration

    volumes = {k: torch.rand(2, 1, 8, 8, 8) for k in ("original", "masked", "reconstruction")}
    objective = SimpleNamespace(
        reconstruct=lambda batch, backbone: volumes, declaration=ObjectiveDeclaration(backbone="any", reconstructs=True)
    )
    module = torch.nn.Module()
    module.objective, module.backbone = objective, None
    wandb = _Recorder()
    callback = ReconstructionImages(tmp_path / "images", every_n_steps=5, wandb_logger=wandb)
    for step in (4, 5, 7):  # every 5 steps, and the last (max_steps=7) too
        trainer = SimpleNamespace(global_step=step, is_global_zero=True, max_steps=7)
        callback.on_train_batch_end(trainer, module, None, {"modality": ["CT", "MR"]}, 0)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["step000005.png", "step000007.png"]
    picture = np.asarray(Image.open(tmp_path / "images" / "step000005.png"))
    grid = reconstruction_grid(volumes, [0, 1])
    assert picture.shape[0] > grid.shape[0] and picture.shape[1] > grid.shape[1]  # room for the captions
    assert picture[:13].max() > 200  # the caption line is drawn (white text on black)
    assert len(wandb.calls) == 2 and wandb.calls[0]["step"] == 5 and wandb.calls[0]["key"] == "reconstructions"
