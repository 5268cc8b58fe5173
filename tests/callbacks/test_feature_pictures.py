"""Feature-PCA pictures (pretrain/callbacks/features.py): the colours follow the features' main directions, one
scale for every sample, and the picture lays the crop beside its colours in three views."""

import torch

from voxfm.pretrain.callbacks.features import feature_grid, pca_colours


def test_two_kinds_of_patch_get_two_colours_on_one_scale_for_every_sample():
    torch.manual_seed(0)
    a, b = torch.randn(16), torch.randn(16)
    noise = 0.01 * torch.randn(2, 64, 16)
    kinds = torch.arange(64) % 2 == 0  # alternate patches are of kind a or b, in both samples
    patches = torch.where(kinds[None, :, None], a, b) + noise
    colours = pca_colours(patches)
    assert colours.shape == (2, 64, 3) and colours.min() >= 0 and colours.max() <= 1
    first = colours[..., 0]  # the main component separates the kinds, the same way in both samples
    assert (first[:, kinds].min() > first[:, ~kinds].max()) or (first[:, kinds].max() < first[:, ~kinds].min())
    assert torch.allclose(first[0], first[1], atol=0.05)  # the other components are the noise


def test_the_picture_holds_the_crop_and_its_colours_for_each_view():
    images = torch.rand(2, 1, 16, 16, 16)
    colours = pca_colours(torch.randn(2, 8, 5))  # a 2×2×2 token grid of patch 8
    picture = feature_grid(images, colours, (8, 8, 8))
    assert picture.dtype.name == "uint8" and picture.shape[2] == 3
    assert picture.shape[1] > picture.shape[0]  # six tiles across (crop | colours × three views), two rows down
