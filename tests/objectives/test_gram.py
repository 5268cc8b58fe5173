"""objective.loss.gram of objective=dino (DINOv3's Gram anchoring, pretrain/objectives/dino/gram.py): the loss against
its formula by hand, zero for one network on one input, a gradient for the student only; the Gram teacher is the
EMA teacher's snapshot at start_step and at every refresh, tensor-equal in between, saved and restored with the run;
the dense-feature monitor against its definition; a stored config without `gram` resumes; bad keys fail fast."""

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from voxfm.data.views.counter_random import step_key
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.config.schema import validate_pretrain
from voxfm.pretrain.launch.build import build_module
from voxfm.pretrain.objectives.dino.gram import gram_loss
from voxfm.pretrain.objectives.dino.monitors import far_patch_similarity
from voxfm.pretrain.training.checkpoints import load_checkpoint
from voxfm.pretrain.training.resume_check import check_resume_config


def _config(*overrides: str, experiment: str = "demo_dino_gram"):
    return load_config("pretrain", [f"experiment={experiment}", "data.shards=/x", "run_dir=/y", *overrides])


def _module(*overrides: str):
    torch.manual_seed(0)
    return build_module(_config(*overrides))


def _batch(module, step: int = 0):
    size = module.view_pipeline.region_size_needed()
    g = torch.Generator().manual_seed(step)
    regions = {
        "region": torch.randint(-1000, 1000, (2, 1, *size), generator=g, dtype=torch.int16),
        "low": torch.full((2,), -1000.0),
        "high": torch.full((2,), 1000.0),
    }
    return module.view_pipeline(regions, step_key(torch.device("cpu"), 0, step, 0))


def _moved(module, scale: float = 0.05) -> None:
    """A student that has left its teacher (as optimiser steps would move it)."""
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.add_(scale * torch.randn_like(p))


def _state(net: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _brute(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    values = []
    for s, t in zip(F.normalize(student.double(), dim=-1), F.normalize(target.double(), dim=-1)):
        values.append(((s @ s.T - t @ t.T) ** 2).sum() / s.shape[0] ** 2)
    return torch.stack(values).mean()


def test_the_gram_loss_equals_its_formula_on_a_hand_made_batch():
    a = 1 / math.sqrt(2)
    # image 1: unit rows (after normalisation) e1, e2, (e1 + e2)/√2 against e1, e1, e2:
    #   G_s − G_t = [[0, −1, a], [−1, 0, a], [a, a, 0]] → ||·||²_F = 2 + 4a² = 4, / N² = 4/9; image 2: identical → 0
    student = torch.tensor([[[3.0, 0.0], [0.0, 0.5], [2.0, 2.0]], [[1.0, 2.0], [-1.0, 0.0], [0.0, 4.0]]])
    target = torch.tensor([[[1.0, 0.0], [7.0, 0.0], [0.0, 2.0]], [[2.0, 4.0], [-3.0, 0.0], [0.0, 1.0]]])
    expected = (4 / 9 + 0) / 2
    assert abs(2 + 4 * a**2 - 4) < 1e-12
    assert gram_loss(student, target).item() == pytest.approx(expected, abs=1e-6)  # N = 3 > D = 2: the D×D form
    wide = (F.pad(student, (0, 3)), F.pad(target, (0, 3)))  # D = 5 ≥ N: the N×N form
    assert gram_loss(*wide).item() == pytest.approx(expected, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    for n, d in ((40, 6), (6, 40)):  # both forms against a double-precision loop over images
        s, t = torch.randn(3, n, d, generator=g), torch.randn(3, n, d, generator=g)
        assert gram_loss(s, t).item() == pytest.approx(_brute(s, t).item(), rel=1e-5)


def test_the_gram_loss_is_zero_for_the_same_network_on_the_same_input_and_its_gradient_reaches_only_the_student():
    module = _module("objective.loss.gram.start_step=0")
    objective, backbone = module.objective, module.backbone
    image = _batch(module)["image"]
    assert objective.gram.active and _equal(_state(objective.gram.teacher), _state(backbone))
    assert objective.gram(image, backbone.features(image)[1]).item() == 0.0  # one network, one input
    _moved(module)
    ema, gram = _state(objective.teacher_backbone), _state(objective.gram.teacher)
    loss = objective.gram(image, backbone.features(image)[1])
    assert loss.item() > 0
    loss.backward()
    trained = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trained) and sum(p.grad.abs().sum() for _, p in trained) > 0
    for frozen in (objective.gram.teacher, objective.teacher_backbone):
        assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    assert _equal(_state(objective.teacher_backbone), ema) and _equal(_state(objective.gram.teacher), gram)
    assert not objective.gram.teacher.training  # no drop path: a fixed target
    module.train()
    assert not objective.gram.teacher.training and backbone.training


def test_the_objective_adds_the_weighted_gram_loss_and_logs_its_weight_and_refresh_step():
    module = _module("objective.loss.gram.start_step=0", "objective.loss.gram.weight=2.5")
    _moved(module)
    loss, logs = module.objective(_batch(module), module.backbone)
    parts = logs["dino_loss"] + 0.1 * logs["koleo"] + logs["ibot_loss"] + 2.5 * logs["gram_loss"]
    assert logs["gram_loss"] > 0 and torch.allclose(loss, parts, rtol=1e-6)
    assert logs["gram_weight"] == 2.5 and logs["gram_refresh_step"].item() == 0
    before = _module()  # start_step 2: off at step 0, logged as weight 0 and no snapshot yet
    _, logs = before.objective(_batch(before), before.backbone)
    assert "gram_loss" not in logs and logs["gram_weight"] == 0.0 and logs["gram_refresh_step"].item() == -1
    off = build_module(_config(experiment="demo_dino"))  # the default: weight 0, no Gram teacher, no state
    assert off.objective.gram is None and not any("gram" in k for k in off.objective.state_dict())
    assert "gram_loss" not in off.objective(_batch(off), off.backbone)[1]


def test_the_export_takes_the_ema_teacher_not_the_gram_teacher():
    from voxfm.pretrain.export.run import backbone_state

    module = _module()
    objective = module.objective
    for _ in range(3):  # past the snapshot at step 2: the two teachers differ
        _moved(module)
        objective.update_teacher(module.backbone, 300)
    config = OmegaConf.to_container(_config(), resolve=True)
    exported = backbone_state(module.state_dict(), config, module.backbone)
    assert _equal(exported, _state(objective.teacher_backbone))
    assert not _equal(exported, _state(objective.gram.teacher))


def test_the_teacher_scale_pools_the_gram_teachers_finer_grid_onto_the_students():
    module = _module("objective.loss.gram.start_step=0", "objective.loss.gram.teacher_scale=2")
    gram, image = module.objective.gram, _batch(module)["image"]
    pooled = gram.targets(image)  # [B, 4³, D] from the teacher's 8³ grid of the 2× crop
    fine = gram.teacher.features(F.interpolate(image, scale_factor=2, mode="trilinear", align_corners=False))[1]
    assert pooled.shape == module.backbone.features(image)[1].shape and fine.shape[1] == 8 * pooled.shape[1]
    fine = fine.view(image.shape[0], 8, 8, 8, -1)
    for index, (z, y, x) in enumerate([(z, y, x) for z in range(4) for y in range(4) for x in range(4)]):
        cell = fine[:, 2 * z : 2 * z + 2, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].reshape(image.shape[0], 8, -1)
        assert torch.allclose(pooled[:, index], cell.mean(dim=1), atol=1e-6)  # row-major token order kept
    assert module.objective(_batch(module), module.backbone)[1]["gram_loss"] > 0


def test_the_gram_teacher_is_the_ema_teacher_at_its_refresh_steps_and_unchanged_between():
    module = _module()  # start_step 2, refresh_every 3: snapshots after steps 2, 5, 8
    objective = module.objective
    initial = _state(objective.gram.teacher)
    previous = initial
    for step in range(1, 10):
        _moved(module)
        objective.update_teacher(module.backbone, 300)
        gram, ema = _state(objective.gram.teacher), _state(objective.teacher_backbone)
        assert objective.gram.active == (step >= 2)
        if step in (2, 5, 8):
            assert _equal(gram, ema) and not _equal(gram, previous)
            assert objective.gram.refreshed_at.item() == step
        else:
            assert _equal(gram, previous) and not _equal(gram, ema)
            assert objective.gram.refreshed_at.item() == max([-1] + [s for s in (2, 5, 8) if s <= step])
        previous = gram
        if step == 3:  # a run resumed here: a fresh module loads the snapshot, its step and its phase
            resumed = _module()
            resumed.load_state_dict(module.state_dict())
            assert resumed.objective.gram.active and resumed.objective._steps == 3
            assert _equal(_state(resumed.objective.gram.teacher), gram)
            assert resumed.objective.gram.refreshed_at.item() == 2


def test_the_dense_feature_monitor_measures_far_patches_only():
    grid = (1, 1, 4)  # 4 tokens in a row: pairs at distance >= 2 are (0, 2), (0, 3), (1, 3)
    same = torch.ones(1, 4, 3)
    assert far_patch_similarity(same, grid).item() == pytest.approx(1.0)  # one feature everywhere: degraded
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])  # two halves, orthogonal
    # far pairs: (0,2) 0, (0,3) 0, (1,3) 0 — neighbours (0,1) and (2,3) are alike but do not count
    assert far_patch_similarity(x, grid).item() == pytest.approx(0.0, abs=1e-7)
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]])
    expected = (1 / math.sqrt(2) + 1.0 + 0.0) / 3  # (0,2), (0,3), (1,3)
    assert far_patch_similarity(y, grid).item() == pytest.approx(expected, abs=1e-6)
    visible = torch.tensor([[True, True, True, False]])  # token 3 hidden: (0,2) alone
    assert far_patch_similarity(y, grid, visible).item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    g = torch.Generator().manual_seed(1)
    grid, x = (3, 4, 5), torch.randn(2, 60, 6, generator=g)
    visible = torch.rand(2, 60, generator=g) > 0.3
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in grid), indexing="ij")
    coords = torch.stack(axes, dim=-1).reshape(-1, 3)
    unit = F.normalize(x, dim=-1)
    for distance in (2.0, 2.5):  # against every pair, one by one
        pairs = (torch.cdist(coords, coords) >= distance) & visible[:, :, None] & visible[:, None, :]
        brute = ((unit @ unit.transpose(1, 2)) * pairs).sum() / pairs.sum()
        assert far_patch_similarity(x, grid, visible, distance).item() == pytest.approx(brute.item(), abs=1e-5)
    module = _module()
    logs = module.objective(_batch(module), module.backbone)[1]
    assert 0.0 < logs["far_patch_similarity"].item() <= 1.0


def test_a_stored_dino_config_without_gram_resumes_and_turning_it_on_is_refused():
    new = OmegaConf.to_container(_config(experiment="demo_dino"), resolve=True)
    old = OmegaConf.to_container(_config(experiment="demo_dino"), resolve=True)
    del old["objective"]["loss"]["gram"]  # a checkpoint of a release before Gram anchoring
    assert check_resume_config(old, new, [], "last.ckpt") == {}
    on = OmegaConf.to_container(_config("objective.loss.gram.weight=1", experiment="demo_dino"), resolve=True)
    with pytest.raises(ValueError, match=r"objective.loss.gram.weight: '<absent>' → 1 \(changes the model"):
        check_resume_config(old, on, [], "last.ckpt")


@pytest.mark.parametrize(
    "override, error",
    [
        ("objective.loss.gram.teacher_scale=0", "objective.loss.gram.teacher_scale=0: expected a value >= 1"),
        ("objective.loss.gram.refresh_every=0", "objective.loss.gram.refresh_every=0: expected a value >= 1"),
        ("objective.loss.gram.weight=-1", "objective.loss.gram.weight=-1: expected a value >= 0.0"),
        ("+objective.loss.gram.refresh_evry=3", "objective.loss.gram.refresh_evry: unknown key; did you mean"),
    ],
)
def test_bad_gram_keys_fail_before_anything_is_built(override, error):
    cfg = _config(override)
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        validate_pretrain(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.slow
def test_a_run_stopped_between_refreshes_resumes_with_its_gram_teacher(shard_dir, tmp_path):
    common = [
        "pretrain",
        "experiment=demo_dino_gram",
        f"data.shards={shard_dir}",
        f"run_dir={tmp_path}",
        "data.num_workers=0",
        "trainer.progress_bar=false",
        "trainer.images_every_n_steps=2",
        "trainer.log_every_n_steps=1",
        "trainer.checkpoint_every_n_steps=2",
    ]

    def checkpoint(name: str = "last.ckpt") -> dict:
        state = load_checkpoint(tmp_path / "checkpoints" / name)["state_dict"]
        gram = {k.split(".", 3)[3]: v for k, v in state.items() if k.startswith("objective.gram.teacher.")}
        ema = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("objective.teacher_backbone.")}
        return {"gram": gram, "ema": ema, "at": int(state["objective.gram.refreshed_at"])}

    assert main([*common, "trainer.max_steps=3"]) == 0  # snapshot after step 2; stopped at 3, before the next (5)
    at2, at3 = checkpoint("step000002.ckpt"), checkpoint()
    assert at2["gram"].keys() == at2["ema"].keys() and _equal(at2["gram"], at2["ema"]) and at2["at"] == 2
    assert _equal(at3["gram"], at2["gram"]) and not _equal(at3["ema"], at2["ema"]) and at3["at"] == 2
    assert main([*common, "trainer.max_steps=4"]) == 0  # resumed at 3 with the stored snapshot, not a new one
    at4 = checkpoint()
    assert _equal(at4["gram"], at3["gram"]) and not _equal(at4["ema"], at3["ema"]) and at4["at"] == 2
    rows = list(csv.DictReader(open(tmp_path / "metrics" / "metrics.csv")))
    gram = {int(r["step"]): r for r in rows if r.get("train/gram_weight")}
    assert sorted(gram) == [0, 1, 2, 3] and all(float(gram[s]["train/gram_weight"]) == (s >= 2) for s in gram)
    assert [s for s in gram if gram[s].get("train/gram_loss")] == [2, 3]
    assert [float(gram[s]["train/gram_refresh_step"]) for s in gram] == [-1, -1, 2, 2]
    assert all(0 < float(r["train/far_patch_similarity"]) <= 1 for r in gram.values())
    pictures = sorted(p.name for p in (tmp_path / "images").glob("features_step*.png"))
    assert pictures == ["features_step000002.png", "features_step000003.png", "features_step000004.png"]
    picture = np.asarray(Image.open(tmp_path / "images" / pictures[0]))
    assert picture.ndim == 3 and picture.shape[2] == 3 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 16


@pytest.mark.slow
@pytest.mark.parametrize("log_step", [False, True])
def test_the_gram_phase_traces_as_one_graph_for_trainer_compile(log_step):
    """The Gram teacher (2× input, pooled), the loss and the monitors: no graph break (compile uses fullgraph)."""
    from voxfm.pretrain.training.compiled_step import objective_inputs

    module = _module("objective.loss.gram.start_step=0", "objective.loss.gram.teacher_scale=2")
    inputs = objective_inputs({**_batch(module), "log_step": log_step})
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(module._objective)(inputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
