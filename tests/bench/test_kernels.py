"""`voxfm bench model kernels=true`: the compiled step's generated kernels and bytes (inductor's count) and the eager
ops outside its graphs, counted on the CPU."""

import json

import pytest
import torch

from voxfm.pretrain.bench.kernels import EagerOps, outside_modes
from voxfm.pretrain.cli.main import main


def test_the_counter_sees_eager_random_and_cast_ops_and_not_a_compiled_graphs():
    compiled = torch.compile(lambda x: (x.float() * torch.rand_like(x.float())).to(torch.bfloat16), fullgraph=True)
    x = torch.ones(4, 4, dtype=torch.float16)
    compiled(x)
    counter = EagerOps()
    with counter:
        outside_modes(compiled)(x)  # the same random draw and casts, inside a graph: not eager
        assert counter.ops == 0
        y = torch.rand(3).to(torch.bfloat16).float()  # eager: a draw and two casts
        y.add_(1)
    assert counter.random_or_cast == {"aten.rand.default": 1, "aten._to_copy.default": 2} and counter.ops == 4


@pytest.mark.slow
def test_a_compiled_step_runs_no_eager_random_or_cast_op(capsys):
    assert main(["bench", "model", "experiment=demo", "kernels=true", "data.batch_size=2", "steps=1"]) == 0
    out = capsys.readouterr().out.splitlines()
    result = json.loads(next(line for line in out if line.startswith("{")))  # after the compile-time lines
    assert result["graphs"] == 3  # the views (their random draws too); objective + backbone, forward and backward
    assert result["generated_kernels"] > 0 and all(b > 0 for b in result["generated_mb_per_graph"])
    assert result["generated_mb_per_view"] > 0 and result["library_mb"] > 0  # the ViT's GEMMs: library calls
    assert result["eager_ops_per_step"] > 0  # the counter was on: the optimiser and autograd's bookkeeping
    assert result["eager_random_or_cast_per_step"] == 0 and result["eager_random_or_cast"] == {}
    assert "random/cast among them 0: none" in "\n".join(out)
