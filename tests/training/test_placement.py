"""A GPU recipe on a CPU: one warning naming the CPU twins, data workers capped at the cores."""

import torch
from omegaconf import OmegaConf

from voxfm.pretrain.launch.placement import cores, fit_workers_to_cpu, warn_large_model_on_cpu


def test_workers_are_capped_at_the_cores_on_a_cpu_and_left_alone_on_a_gpu(capsys):
    cfg = OmegaConf.create({"data": {"num_workers": cores() + 10}})
    fit_workers_to_cpu(cfg, on_gpu=True)
    assert cfg.data.num_workers == cores() + 10 and capsys.readouterr().err == ""
    fit_workers_to_cpu(cfg, on_gpu=False)
    assert cfg.data.num_workers == cores()
    assert f"data.num_workers={cores() + 10} on {cores()} CPU core(s) and no GPU" in capsys.readouterr().err


def test_a_large_model_on_a_cpu_is_named_with_the_cpu_twins(capsys):
    warn_large_model_on_cpu(torch.nn.Linear(10, 10), on_gpu=False)
    assert capsys.readouterr().err == ""
    big = torch.nn.Linear(5000, 5000)  # 25 M parameters, as a GPU recipe's backbone would have
    warn_large_model_on_cpu(big, on_gpu=True)
    assert capsys.readouterr().err == ""
    warn_large_model_on_cpu(big, on_gpu=False)
    err = capsys.readouterr().err
    assert "a 25 M-parameter model training on the CPU" in err and "experiment=demo" in err
