"""voxfm's Primus against nnU-Net's (dynamic_network_architectures 0.4.4 through timm, tests/models/reference_primus):
the same state_dict keys and shapes, weights loading strictly both ways, the same output; RoPE relative and per
token."""

import pytest
import torch

from tests.models.reference_primus import reference_primus
from voxfm.models.primus import PRESETS, Primus

NNSSL = {"drop_path_rate": 0.2, "init_values": 0.1, "scale_attn_inner": True}  # nnssl's Primus presets


def _pair(kwargs: dict):
    torch.manual_seed(0)
    ours = Primus(**kwargs)
    theirs = reference_primus()(**{k: tuple(v) if isinstance(v, list) else v for k, v in ours.kwargs.items()})
    return ours.eval(), theirs.eval()


def _tiny(**extra) -> dict:
    return {
        "input_channels": 1,
        "embed_dim": 48,
        "patch_embed_size": 8,
        "num_classes": 2,
        "eva_depth": 2,
        "eva_numheads": 2,
        "input_shape": (32, 24, 16),
        **NNSSL,
        **extra,
    }


@pytest.mark.parametrize("registers", [0, 3])
def test_tiny_primus_equals_nnunets_both_ways(registers):
    ours, theirs = _pair(_tiny(num_register_tokens=registers))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 1, 32, 24, 16)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() < 1e-4
    torch.manual_seed(1)
    again = Primus(**_tiny(num_register_tokens=registers)).eval()
    again.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(again(x), ours(x))


@pytest.mark.parametrize("registers", [0, pytest.param(4, marks=pytest.mark.slow)])
def test_primus_m_with_nnssls_arguments_loads_into_nnunets_and_gives_its_output(registers):
    depth, heads, dim = PRESETS["M"]
    ours, theirs = _pair(
        {
            "input_channels": 1,
            "embed_dim": dim,
            "patch_embed_size": 8,
            "num_classes": 1,
            "eva_depth": depth,
            "eva_numheads": heads,
            "input_shape": 64,
            "num_register_tokens": registers,
            **NNSSL,
        }
    )
    assert len(ours.state_dict()) == len(theirs.state_dict()) == 16 * 23 + 16 + (registers > 0)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() < 1e-4


def test_rope_logits_depend_only_on_the_offset_between_tokens():
    net = Primus(**_tiny())
    table = net.eva.rope.pos_embed.view(4, 3, 2, -1)  # grid (4, 3, 2), [sin | cos] per token
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 24, generator=g), torch.randn(1, 1, 1, 24, generator=g)

    def logit(a, b):
        from voxfm.models.eva import rotate

        return (rotate(q, table[a].view(1, 1, 1, -1)) * rotate(k, table[b].view(1, 1, 1, -1))).sum()

    assert torch.allclose(logit((0, 0, 0), (1, 2, 1)), logit((2, 0, 0), (3, 2, 1)), atol=1e-5)  # all shifted
    assert torch.allclose(logit((1, 1, 1), (3, 2, 0)), logit((0, 0, 1), (2, 1, 0)), atol=1e-5)
    assert not torch.allclose(logit((0, 0, 0), (1, 0, 0)), logit((0, 0, 0), (2, 0, 0)), atol=1e-3)


def test_visible_tokens_carry_their_own_positions():
    net = Primus(**_tiny(num_register_tokens=2, init_values=None)).eval()
    with torch.no_grad():  # sharp attention, so positions matter (at init q.k is ~0 and attention ~uniform)
        for block in net.eva.blocks:
            block.attn.q_proj.weight.mul_(20)
            block.attn.k_proj.weight.mul_(20)
    x = torch.randn(2, 1, 32, 24, 16)
    with torch.no_grad():
        full = net.encode(net.embed(x))  # all 24 tokens, in raster order
        ids = torch.stack([torch.randperm(24, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
        permuted = net.encode(net.embed(x, ids), ids)
        assert torch.allclose(permuted, full.gather(1, ids.unsqueeze(-1).expand(-1, -1, 48)), atol=1e-5)
        visible = ids[:, :10]  # a subset keeps its positions: not those of 0..9
        subset = net.encode(net.embed(x, visible), visible)
        first = torch.arange(10).expand(2, -1)  # rotated as if at positions 0..9: what must not happen
        wrong = net.encode(net.embed(x, visible), first)
        assert not torch.allclose(subset, wrong, atol=1e-3)
