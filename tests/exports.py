"""Shared by the export tests: voxfm's own encoder from a checkpoint, and a model card's loading snippet."""

from omegaconf import OmegaConf

from voxfm.pretrain.launch.build import build_module
from voxfm.pretrain.training.checkpoints import load_checkpoint


def voxfm_encoder(ckpt_path):
    ckpt = load_checkpoint(ckpt_path)
    module = build_module(OmegaConf.create(ckpt["voxfm_config"]))
    module.load_state_dict(ckpt["state_dict"])
    return module.backbone.eval()


def model_card_snippet(folder) -> str:
    text = (folder / "README.md").read_text()
    return text.split("```python\n", 1)[1].split("\n```", 1)[0]
