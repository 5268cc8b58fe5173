import pytest
import torch
from monai.networks.nets import ViT as MonaiViT
from torch.utils._python_dispatch import TorchDispatchMode

from voxfm.models.vit import ViT
from voxfm.models.vit_blocks import FoldedBiasLinear, LayerNorm


def tiny(**kw):
    return ViT(
        **{
            "in_channels": 1,
            "img_size": 32,
            "patch_size": 8,
            "hidden_size": 48,
            "mlp_dim": 96,
            "num_layers": 2,
            "num_heads": 4,
            **kw,
        }
    )


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


def test_residual_stream_stays_in_the_autocast_dtype():
    """bf16 autocast: the fp32 position embedding must not promote the tokens, or every block runs an fp32 stream
    with a cast before each Linear."""
    model = tiny(pos_embed_type="learnable")
    x, ids = torch.randn(2, 1, 32, 32, 32), torch.tensor([[0, 5, 9], [1, 2, 63]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for tokens in (model.embed(x), model.embed(x, ids)):
            assert tokens.dtype == torch.bfloat16
            assert model.blocks[0](tokens).dtype == torch.bfloat16 and model.encode(tokens).dtype == torch.bfloat16
        model(x).float().sum().backward()
    assert model.patch_embedding.position_embeddings.grad.dtype == torch.float32  # the parameter itself stays fp32


def test_layer_norm_keeps_the_input_dtype_and_nn_layer_norm_maths():
    torch.manual_seed(0)
    ours, ref = LayerNorm(48), torch.nn.LayerNorm(48)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 48)
    assert torch.equal(ours(x), ref(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ours(x.bfloat16())
    assert low.dtype == torch.bfloat16 and (low.float() - ref(x)).abs().max() < 0.1


def test_sincos_position_embedding_is_fixed():
    model = tiny()
    assert not model.patch_embedding.position_embeddings.requires_grad


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"img_size": 30}, "divisible by patch_size"),
        ({"hidden_size": 50, "num_heads": 5}, "divisible by 6"),
        ({"num_heads": 5}, "num_heads=5"),
        ({"pos_embed_type": "rope"}, "pos_embed_type='rope'"),
    ],
)
def test_bad_arguments_fail_fast(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


@pytest.mark.parametrize("channels,pos", [(1, "sincos"), (2, "learnable")])
def test_embedding_only_some_positions_equals_embedding_all_then_picking(channels, pos):
    """MAE embeds only the visible patches (the conv as a matmul on them): same tokens, same weight gradients."""
    torch.manual_seed(0)
    model = ViT(
        in_channels=channels,
        img_size=(32, 48, 16),
        patch_size=(8, 16, 4),
        hidden_size=48,
        mlp_dim=96,
        num_layers=1,
        num_heads=4,
        pos_embed_type=pos,
    )
    x = torch.randn(3, channels, 32, 48, 16)
    n = model.grid[0] * model.grid[1] * model.grid[2]
    ids = torch.stack([torch.randperm(n)[:7].sort().values for _ in range(3)])
    every = model.embed(x)
    picked = every.gather(1, ids.unsqueeze(-1).expand(-1, -1, 48))
    some = model.embed(x, ids)
    assert some.shape == (3, 7, 48) and (some - picked).abs().max() < 1e-5
    grads = []
    for tokens in (picked, some):
        model.zero_grad()
        tokens.pow(2).sum().backward(retain_graph=True)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "patch_embedding.patch_embeddings.weight" in grads[1]
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-4, rtol=1e-4) for k in grads[0])


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_folded_bias_linear_is_nn_linear_whose_compiled_backward_sums_no_gradient_outside_its_gemms():
    """The MLP's first layer (and the decoder's qkv) take the bias gradient from the weight gradient's GEMM in a
    compiled step: the same outputs and gradients as nn.Linear, same parameter names, and no reduction of its own
    over the output gradient (the pass over the 4×-wide hidden activations it saves). Eagerly it is nn.Linear."""
    torch.manual_seed(0)
    ours, ref = FoldedBiasLinear(48, 96).double(), torch.nn.Linear(48, 96).double()
    ref.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 5, 48, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 5, 96, dtype=torch.float64)
    traced = torch.compile(ours, backend="aot_eager", fullgraph=True)  # the graphs run op by op: ops can be seen
    results, backward_ops = [], []
    for layer in (traced, ours, ref):
        y = layer(x)
        with _Ops() as ops:
            y.backward(dy)
        backward_ops.append(ops.names)
        params = layer.parameters()
        results.append((y.detach(), x.grad, *(p.grad for p in params)))
        x.grad = None
        layer.zero_grad(set_to_none=True)
    for a, b in zip(results[0], results[2]):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(results[1], results[2]))  # eagerly: nn.Linear's own ops
    assert "mm.default" in backward_ops[0] and not any(n.startswith("sum") for n in backward_ops[0])
    assert any(n.startswith("sum") for n in backward_ops[2])
    with torch.no_grad():
        assert torch.equal(traced(x), ref(x))  # no gradient to compute: nn.Linear itself
    ours.eval()
    y = traced(x)
    with _Ops() as ops:
        y.sum().backward()
    assert any(n.startswith("sum") for n in ops.names)  # in eval mode (inference, exports): nn.Linear too
    ours.train()
    ours.zero_grad(set_to_none=True)

    traced, ref = torch.compile(ours.float(), backend="aot_eager"), ref.float()
    for layer in (traced, ref):  # bf16 autocast, as a GPU trains: bf16 out, fp32 parameter gradients
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x.detach().float())
        assert y.dtype == torch.bfloat16
        loss = y.float().pow(2).sum()
        with _Ops() as ops:
            loss.backward()
        assert any(n.startswith("sum") for n in ops.names) == (layer is ref)
    assert ours.bias.grad.dtype == torch.float32
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=0.02, atol=0.02 * q.grad.abs().max().item())
