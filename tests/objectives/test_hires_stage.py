"""DINOv3's high-resolution stage in 3D: a 32³ demo_dino run continued from its format=full export at 48³ crops
trains, resumes and exports, and the export loads at the new size."""

import json

import pytest
import torch

from voxfm.pretrain.cli.main import main
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint

pytestmark = pytest.mark.slow


def _pretrain(experiment, shard_dir, run, steps, *extra):
    args = ["pretrain", f"experiment={experiment}", f"data.shards={shard_dir}", f"run_dir={run}"]
    args += [f"trainer.max_steps={steps}", "trainer.progress_bar=false", "data.num_workers=0", *extra]
    return main([*args, "trainer.images_every_n_steps=0", "data.batch_size=2", "objective.views.n_local=1"])


@pytest.mark.parametrize("pos_embed", ["sincos", "learnable"])
def test_a_32_cubed_dino_run_continues_at_48_cubed_resumes_and_exports(shard_dir, tmp_path, pos_embed, capsys):
    low, full, high = tmp_path / "low", tmp_path / "full", tmp_path / "high"
    embed = f"model.pos_embed_type={pos_embed}"
    assert _pretrain("demo_dino", shard_dir, low, 2, embed) == 0
    assert main(["export", f"checkpoint={low}", f"output={full}", "format=full"]) == 0
    assert _pretrain("demo_dino_hires", shard_dir, high, 3, embed, f"init_from={full}") == 0
    assert "position tables resized for the new crop: backbone.patch_embedding.position_embeddings" in (
        capsys.readouterr().out
    )
    start = json.loads((high / "events.jsonl").read_text().splitlines()[0])
    assert start["step"] == 2 and start["resized"]["backbone.patch_embedding.position_embeddings"] == [
        [1, 64, 48],  # 4³ tokens of 32³ crops
        [1, 216, 48],  # 6³ of 48³
    ]
    assert _pretrain("demo_dino_hires", shard_dir, high, 4, embed, f"init_from={full}") == 0  # resumes its own
    assert find_resume_checkpoint(high / "checkpoints")[1] == 4

    out = tmp_path / "export"
    assert main(["export", f"checkpoint={high}", f"output={out}"]) == 0
    meta = json.loads((out / "backbone.json").read_text())
    assert meta["kwargs"]["img_size"] == [48, 48, 48]
    from monai.networks.nets import ViT
    from safetensors.torch import load_file

    net = ViT(**meta["kwargs"])
    net.load_state_dict(load_file(str(out / "backbone.safetensors")), strict=True)
    assert net(torch.zeros(1, 1, 48, 48, 48))[0].shape == (1, 216, 48)
