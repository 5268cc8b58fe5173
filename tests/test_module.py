"""The LightningModule: fused AdamW with gradient clipping under bf16, parameter groups."""

import torch

from pretrain.checkpoints import load_checkpoint
from pretrain.config import load_config
from pretrain.train import build_module, run_pretrain


def test_fused_adamw_clips_gradients_under_bf16_mixed(tmp_path, shard_dir):
    """Lightning refuses to clip for a fused optimiser under mixed precision; voxfm clips itself (no scaler in bf16)."""
    cfg = load_config("pretrain", ["experiment=demo", f"data.shards={shard_dir}", f"run_dir={tmp_path}",
                                   "trainer.max_steps=2", "trainer.precision=bf16-mixed", "optim.fused=true",
                                   "trainer.gradient_clip_val=1.0", "trainer.progress_bar=false",
                                   "trainer.images_every_n_steps=0", "data.num_workers=0"])
    run_pretrain(cfg)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    assert all(group["fused"] for group in ckpt["optimizer_states"][0]["param_groups"])


def test_no_weight_decay_on_norms_biases_and_mask_tokens():
    cfg = load_config("pretrain", ["experiment=demo_mim", "data.shards=/x", "run_dir=/y"])
    module = build_module(cfg)
    decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] > 0
    ids = {id(p) for p in no_decay["params"]}
    assert all(id(t) in ids for t in module.objective.mask_tokens)
    assert all(p.ndim >= 2 for p in decay["params"])
    assert not any(p is q for p in decay["params"] for q in no_decay["params"])
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    assert torch.is_tensor(trainable[0])
