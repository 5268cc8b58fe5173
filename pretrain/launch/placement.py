"""A recipe on the machine it meets: a GPU recipe started on a CPU says once what it will cost and which CPU twin
exists, and its data workers are capped at the cores (twelve workers on two cores only fight the step)."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, open_dict

from voxfm.data.ingest.run import available_cores as cores

LARGE_ON_CPU = 20_000_000  # parameters: above this a CPU step takes tens of seconds (ViT-S has 22 M)
CPU_TWINS = (
    "experiment=demo, demo_mim, demo_primus, demo_simclr, demo_mae_contrastive, demo_dino, demo_dino_gram "
    "or demo_distill"
)


def fit_workers_to_cpu(cfg: DictConfig, on_gpu: bool) -> None:
    """On a CPU, at most one data worker per core (the step needs them too), said once."""
    n = cores()
    if on_gpu or cfg.data.num_workers <= n:
        return
    print(f"voxfm: warning: data.num_workers={cfg.data.num_workers} on {n} CPU core(s) and no GPU: using {n}",
          file=sys.stderr, flush=True)  # fmt: skip
    with open_dict(cfg):
        cfg.data.num_workers = n


def warn_large_model_on_cpu(module, on_gpu: bool) -> None:
    n = sum(p.numel() for p in module.parameters())
    if not on_gpu and n > LARGE_ON_CPU:
        print(
            f"voxfm: warning: a {n / 1e6:.0f} M-parameter model training on the CPU (no GPU found): expect tens of "
            f"seconds to minutes a step. This looks like a GPU recipe; its CPU twins are {CPU_TWINS}",
            file=sys.stderr,
            flush=True,
        )
