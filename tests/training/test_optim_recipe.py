"""DINOv2's optimisation recipe (`optim.layer_decay`, `optim.weight_decay_end`, `optim.freeze_last_layer_steps`):
off, the two parameter groups of before; on, the layer multipliers, the weight-decay cosine and the held last layer
each as their formula says, on a tiny ViT and a head with a `last_layer`."""

import math
from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from voxfm.data.views.pipeline import ViewPipeline
from voxfm.models.vit import ViT
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.config.schema import PretrainSchema, check_node
from voxfm.pretrain.launch.build import build_module
from voxfm.pretrain.objectives.protocol import ObjectiveDeclaration
from voxfm.pretrain.training.module import PretrainModule

LR, WD, TOTAL = 1e-3, 0.05, 8


class HeadObjective(nn.Module):
    """A DINO-like head on pooled features, its prototypes in `head.last_layer`; the loss pulls them to a target."""

    declaration = ObjectiveDeclaration(backbone="any")

    def __init__(self, with_last_layer: bool = True):
        super().__init__()
        self.head = nn.Sequential()
        self.head.mlp = nn.Linear(12, 8)
        if with_last_layer:
            self.head.last_layer = nn.Linear(8, 4, bias=False)

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        out = self.head(backbone.pooled(batch["image"]))
        return ((out - 1.0) ** 2).mean(), {}


def _module(objective: nn.Module | None = None, **recipe) -> PretrainModule:
    torch.manual_seed(0)
    backbone = ViT(img_size=16, patch_size=8, hidden_size=12, mlp_dim=16, num_layers=2, num_heads=2)
    views = ViewPipeline(crop_size=16, flip_prob=0.0, rotate_prob=0.0, rotate_plane=None)
    optimizer = partial(torch.optim.AdamW, lr=LR, betas=(0.9, 0.95), weight_decay=WD)
    return PretrainModule(
        backbone, objective or HeadObjective(), views, optimizer, warmup_steps=2, total_steps=TOTAL, **recipe
    )


def _lr_of(optimizer, p: torch.Tensor) -> float:
    return next(g["lr"] for g in optimizer.param_groups if any(q is p for q in g["params"]))


def test_off_keeps_the_two_groups_and_lrs_of_before():
    module = _module()
    module.lr_scale = 2.0
    optimizer = module.configure_optimizers()["optimizer"]
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    no_decay = [p for n, p in named if p.ndim < 2 or "mask_token" in n]  # the rule as it was written before
    decay = [p for n, p in named if not (p.ndim < 2 or "mask_token" in n)]
    decay_group, no_decay_group = optimizer.param_groups
    assert decay_group["params"] == decay and no_decay_group["params"] == no_decay
    assert decay_group["weight_decay"] == WD and no_decay_group["weight_decay"] == 0.0
    assert [g["lr"] for g in optimizer.param_groups] == [LR * 2.0 * 0.5] * 2  # warm-up step 0 of 2: half
    assert [g["initial_lr"] for g in optimizer.param_groups] == [LR * 2.0] * 2


def test_layer_decay_scales_each_layer():
    module = _module(layer_decay=0.5)
    optimizer = module.configure_optimizers()["optimizer"]
    vit, base = module.backbone, LR
    expected = {
        vit.patch_embedding.patch_embeddings.weight: base * 0.5**3,
        vit.patch_embedding.patch_embeddings.bias: base * 0.5**3,
        vit.blocks[0].attn.qkv.weight: base * 0.5**2,
        vit.blocks[0].norm1.bias: base * 0.5**2,
        vit.blocks[1].mlp.linear2.weight: base * 0.5,
        vit.blocks[1].norm2.weight: base * 0.5,
        vit.norm.weight: base,
        vit.norm.bias: base,
        module.objective.head.mlp.weight: base,
        module.objective.head.last_layer.weight: base,
    }
    for p, lr in expected.items():
        assert math.isclose(
            next(g["initial_lr"] for g in optimizer.param_groups if any(q is p for q in g["params"])), lr, rel_tol=1e-12
        )
    assert len(optimizer.param_groups) == 8  # layers 0..3, each with decay and without
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    assert all(g["weight_decay"] == (WD if g["params"][0].ndim >= 2 else 0.0) for g in optimizer.param_groups)


def _cosine_wd(step: int, end: float = 0.2) -> float:
    return end + (WD - end) * 0.5 * (1 + math.cos(math.pi * min(step / TOTAL, 1.0)))


def test_weight_decay_follows_the_cosine_on_decay_groups_only():
    module = _module(weight_decay_end=0.2)
    optimizer = module.configure_optimizers()["optimizer"]
    for step, expected in [
        (0, WD),
        (TOTAL // 2, (WD + 0.2) / 2),
        (TOTAL, 0.2),
        (TOTAL + 3, 0.2),
        (2, _cosine_wd(2)),
        (0, WD),
    ]:  # back to 0: a function of the step alone, as a resumed run needs
        loop = SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=step))
        module._trainer = SimpleNamespace(
            global_step=step, optimizers=[optimizer], log_every_n_steps=0, accumulate_grad_batches=1, fit_loop=loop
        )  # what the hook reads
        module.on_train_batch_start({}, 0)
        decay, no_decay = optimizer.param_groups
        assert math.isclose(decay["weight_decay"], expected, rel_tol=1e-12) and no_decay["weight_decay"] == 0.0


def _batch() -> dict:
    g = torch.Generator().manual_seed(1)
    region = torch.randint(-1000, 1000, (2, 1, 16, 16, 16), generator=g, dtype=torch.int16)
    return {"region": region, "low": torch.full((2,), -1000.0), "high": torch.full((2,), 1000.0)}


def test_the_last_layer_stays_still_for_its_steps_then_moves():
    module = _module(freeze_last_layer_steps=3, layer_decay=0.5)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    last, others = (
        module.objective.head.last_layer.weight,
        [module.objective.head.mlp.weight, module.backbone.blocks[0].attn.qkv.weight],
    )
    assert _lr_of(optimizer, last) == 0.0 and optimizer.param_groups[-1]["params"] == [last]
    assert optimizer.param_groups[-1]["initial_lr"] == LR  # outside the backbone: multiplier 1
    batch = module.views(_batch(), torch.Generator().manual_seed(2))
    start, start_others = last.detach().clone(), [p.detach().clone() for p in others]
    for step in range(4):
        loss, _ = module.loss(batch)
        loss.backward()
        assert last.grad is not None and last.grad.abs().sum() > 0
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 2:  # three optimiser steps done
            assert torch.equal(last, start)
            assert all(not torch.equal(p, q) for p, q in zip(others, start_others))
    assert not torch.equal(last, start)


def test_freezing_a_last_layer_that_is_not_there_fails():
    with pytest.raises(ValueError, match=r"freeze_last_layer_steps=3: no trainable parameter named \*last_layer\*"):
        _module(HeadObjective(with_last_layer=False), freeze_last_layer_steps=3)


def test_a_fit_sets_and_logs_the_weight_decay(tmp_path):
    """Lightning calls the hook: the decay group's value at the last step, `train/weight_decay` at logging steps."""
    module = _module(weight_decay_end=0.2, freeze_last_layer_steps=2)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        log_every_n_steps=2,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader([_batch() for _ in range(4)], batch_size=None))
    decay, no_decay, last_layer = trainer.optimizers[0].param_groups  # the value set before the last step, 3
    assert [decay["weight_decay"], no_decay["weight_decay"], last_layer["weight_decay"]] == pytest.approx(
        [_cosine_wd(3), 0.0, _cosine_wd(3)]
    )
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("train/weight_decay")
    logged = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert logged == pytest.approx([_cosine_wd(1), _cosine_wd(3)])


def test_the_config_check_takes_the_keys_and_refuses_bad_values(capsys):
    overrides = [
        "experiment=demo_dino",
        "data.shards=/x",
        "run_dir=/y",
        "optim.layer_decay=0.75",
        "optim.weight_decay_end=0.2",
        "optim.freeze_last_layer_steps=5",
    ]
    cfg = load_config("pretrain", overrides)
    assert check_node(OmegaConf.to_container(cfg, resolve=True), PretrainSchema, "") == []
    module = build_module(cfg)
    assert (module.layer_decay, module.weight_decay_end, module.freeze_last_layer_steps) == (0.75, 0.2, 5)
    for bad, expected in [
        ("optim.layer_decay=0", "optim.layer_decay=0: expected a value > 0.0"),
        ("optim.layer_decay=1.5", "optim.layer_decay=1.5: expected a value <= 1.0"),
        ("optim.freeze_last_layer_steps=-1", "optim.freeze_last_layer_steps=-1: expected a value >= 0"),
        ("optim.weight_decay_end=-0.1", "optim.weight_decay_end=-0.1: expected a value >= 0.0"),
    ]:
        assert main(["pretrain", "experiment=demo", "data.shards=/x", "run_dir=/y", bad]) == 2
        assert expected in capsys.readouterr().err
