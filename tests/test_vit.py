import pytest
import torch
from monai.networks.nets import ViT as MonaiViT

from models.vit import ViT


def tiny(**kw):
    return ViT(**{"in_channels": 1, "img_size": 32, "patch_size": 8, "hidden_size": 48, "mlp_dim": 96,
                  "num_layers": 2, "num_heads": 4, **kw})


@pytest.mark.parametrize("pos", ["sincos", "learnable"])
def test_parameter_names_and_outputs_match_monai(pos):
    torch.manual_seed(0)
    ours = tiny(pos_embed_type=pos, qkv_bias=True)
    monai = MonaiViT(**ours.monai_kwargs())
    monai_only = set(monai.state_dict()) - set(ours.state_dict())
    assert all(".norm_cross_attn." in k for k in monai_only)  # unused without cross-attention
    assert set(ours.state_dict()) <= set(monai.state_dict())
    monai.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        assert (monai(x)[0] - ours(x)).abs().max() < 1e-5


def test_encoder_runs_on_a_subset_of_tokens():
    model = tiny()
    tokens = model.embed(torch.randn(2, 1, 32, 32, 32))
    assert tokens.shape == (2, 64, 48) and model.grid == (4, 4, 4)
    assert model.encode(tokens[:, :16]).shape == (2, 16, 48)


def test_sincos_position_embedding_is_fixed():
    model = tiny()
    assert not model.patch_embedding.position_embeddings.requires_grad


@pytest.mark.parametrize("kw,match", [({"img_size": 30}, "divisible by patch_size"),
                                      ({"hidden_size": 50, "num_heads": 5}, "divisible by 6"),
                                      ({"num_heads": 5}, "num_heads=5"),
                                      ({"pos_embed_type": "rope"}, "pos_embed_type='rope'")])
def test_bad_arguments_fail_fast(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)
