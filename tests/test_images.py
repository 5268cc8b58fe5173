import numpy as np
import torch

from pretrain.images import middle_slices, pick_samples, reconstruction_grid


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
