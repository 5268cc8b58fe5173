"""`features(x, masks, mask_token)` of the token backbones, which self-distillation reads: the class token (ViT) or
first register token (Primus), patch tokens equal to the encoder's, crops of another size through interpolated
positions (and RoPE on their own grid), hidden patches entering as the mask token."""

import torch

from voxfm.models.eva import axial_rope
from voxfm.models.primus import Primus
from voxfm.models.vit import ViT


def test_vit_features_class_token_and_local_crops():
    torch.manual_seed(0)
    vit = ViT(img_size=16, patch_size=4, hidden_size=24, mlp_dim=32, num_layers=2, num_heads=2, class_token=True).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    cls, patches = vit.features(x)
    assert cls.shape == (2, 24) and patches.shape == (2, 64, 24)
    assert torch.allclose(vit(x), patches) and torch.allclose(vit.pooled(x), cls)
    assert torch.equal(vit.patch_embedding.positions(vit.grid), vit.patch_embedding.position_embeddings[0])
    small = vit.patch_embedding.positions((2, 2, 2))  # trilinear: each entry averages a 2³ block of the table
    table = vit.patch_embedding.position_embeddings[0].T.reshape(24, 4, 4, 4)
    assert torch.allclose(small[0], table[:, :2, :2, :2].mean(dim=(1, 2, 3)), atol=1e-6)
    local_cls, local_patches = vit.features(torch.rand(3, 1, 8, 8, 8))
    assert local_cls.shape == (3, 24) and local_patches.shape == (3, 8, 24)
    none = torch.zeros(2, 64, dtype=torch.bool)
    assert torch.allclose(vit.features(x, none, torch.randn(24))[1], patches)
    masks = none.clone()
    masks[:, :10] = True
    token = torch.randn(24)
    other = x.clone()
    other[:, :, :4, :4, :4] = torch.rand(2, 1, 4, 4, 4)  # patch 0 (hidden) changes: the output does not
    assert torch.allclose(vit.features(x, masks, token)[1], vit.features(other, masks, token)[1], atol=1e-6)


def test_primus_features_register_token_and_rope_on_the_crop_grid():
    torch.manual_seed(0)
    primus = Primus(
        embed_dim=48, eva_depth=2, eva_numheads=2, input_shape=16, patch_embed_size=4, num_register_tokens=1
    ).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    cls, patches = primus.features(x)
    assert torch.allclose(patches, primus.encode(primus.embed(x)), atol=1e-6)
    assert cls.shape == (2, 48) and torch.allclose(primus.pooled(x), cls)
    local_cls, local_patches = primus.features(torch.rand(3, 1, 8, 8, 8))
    assert local_patches.shape == (3, 8, 48)
    key = ((2, 2, 2), "cpu")
    assert torch.equal(primus._rope_tables[key], axial_rope((2, 2, 2), 48 // 2 * 2 // 3))
