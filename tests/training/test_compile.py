"""The whole step compiles (trainer.compile=true): stage + objective without graph breaks for every objective; a
compiled run trains, is killed, resumes to max_steps without recompiling, and starts from the eager loss."""

import csv
import os
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

from tests.conftest import REPO
from voxfm.data.views.counter_random import step_key
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.launch.build import build_module
from voxfm.pretrain.launch.run import run_pretrain

TWINS = ["demo", "demo_mim", "demo_simclr", "demo_mae_contrastive", "demo_primus"]


pytestmark = pytest.mark.slow


def _regions(module, batch_size: int) -> dict:
    size = module.view_pipeline.region_size_needed()
    region = torch.randint(
        -1000, 1000, (batch_size, 1, *size), generator=torch.Generator().manual_seed(0), dtype=torch.int16
    )
    return {"region": region, "low": torch.full((batch_size,), -1000.0), "high": torch.full((batch_size,), 1000.0)}


# every objective on ordinary steps; on logging steps, those whose extra figures take another path
@pytest.mark.parametrize("experiment,log_step", [(t, False) for t in TWINS] + [("demo", True), ("demo_mim", True)])
def test_stage_and_objective_trace_as_one_graph(experiment, log_step):
    cfg = load_config("pretrain", [f"experiment={experiment}", "data.shards=/x", "run_dir=/y"])
    module = build_module(cfg)
    regions = _regions(module, 2)
    views = module.view_pipeline
    key = step_key(torch.device("cpu"), 0, 3, 0)
    constants = {"n_views": module.view_pipeline.n_views, "log_step": log_step}
    if module.view_pipeline.masking is not None:
        n = views(regions, key)["mask"].shape[1]
        constants["n_visible"] = n - module.view_pipeline.masking.n_masked(n)

    def step(region, low, high, key):  # random draws included
        return module._objective({**module.view_pipeline.apply(region, low, high, key), **constants})

    explanation = torch._dynamo.explain(step)(regions["region"], regions["low"], regions["high"], key)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("experiment", ["demo", "demo_simclr", "demo_mim", "demo_dino", "demo_dino_hires"])
def test_every_view_pipeline_traces_as_one_graph_random_draws_included(experiment):
    """The views' random numbers are drawn inside their graph (`data/views/counter_random.py`): the whole stage of
    each kind — one view and masks, two overlapping views, multi-crop with iBOT's block masks — traces whole."""
    cfg = load_config("pretrain", [f"experiment={experiment}", "data.shards=/x", "run_dir=/y"])
    views = build_module(cfg).view_pipeline
    regions = _regions(types.SimpleNamespace(view_pipeline=views), 2)
    key = step_key(torch.device("cpu"), 0, 3, 0)
    explanation = torch._dynamo.explain(views.apply)(regions["region"], regions["low"], regions["high"], key)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons


@pytest.mark.slow
def test_compiled_half_precision_views_are_the_eager_fp32_views_rounded_once():
    """Under a half precision the views graph writes fp16 (`view_dtype`): computed in fp32 inside the graph, noise
    included, and rounded once as written: bit for bit the eager fp32 views rounded."""
    cfg = load_config("pretrain", ["experiment=demo", "data.shards=/x", "run_dir=/y"])
    views = build_module(cfg).view_pipeline
    regions = _regions(types.SimpleNamespace(view_pipeline=views), 4)
    torch._dynamo.reset()
    compiled = torch.compile(views.apply, fullgraph=True, dynamic=False)
    for step in range(3):
        key = step_key(torch.device("cpu"), 0, step, 0)
        half = views(regions, key, apply=compiled, dtype=torch.float16)
        full = views(regions, key)
        assert half["image"].dtype == torch.float16 and torch.equal(half["image"], full["image"].half())
        assert torch.equal(half["mask"], full["mask"])
    torch._dynamo.reset()


def _pretrain_args(experiment, shard_dir, run_dir, compiled: bool, max_steps: int, log_every: int = 1) -> list[str]:
    return [
        f"experiment={experiment}",
        f"data.shards={shard_dir}",
        f"run_dir={run_dir}",
        f"trainer.max_steps={max_steps}",
        "trainer.checkpoint_every_n_steps=2",
        f"trainer.log_every_n_steps={log_every}",
        "trainer.progress_bar=false",
        "trainer.images_every_n_steps=0",
        "data.num_workers=1",
        f"trainer.compile={str(compiled).lower()}",
    ]


def _losses(run_dir) -> dict[int, float]:
    rows = []
    for path in sorted((run_dir / "metrics").glob("metrics.csv")):
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get("train/loss")]
    return {int(r["step"]): float(r["train/loss"]) for r in rows}


# demo alternates logging and ordinary steps (two objective graphs, switched every step); demo_mim, slow to compile
# on CPU, logs every step. The kill comes well before max_steps.
@pytest.mark.parametrize("experiment,max_steps,log_every", [("demo", 40, 2), ("demo_mim", 8, 1)])
def test_compiled_run_is_killed_and_resumes_without_recompiling(tmp_path, shard_dir, experiment, max_steps, log_every):
    """`TORCH_LOGS=recompiles` reports any recompilation, in the first process and in the resumed one."""
    run_dir, eager_dir = tmp_path / "run", tmp_path / "eager"
    run_pretrain(load_config("pretrain", _pretrain_args(experiment, shard_dir, eager_dir, False, log_every, log_every)))
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), "TORCH_LOGS": "recompiles"}
    command = [
        sys.executable,
        "-m",
        "voxfm",
        "pretrain",
        *_pretrain_args(experiment, shard_dir, run_dir, True, max_steps, log_every),
    ]
    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 900
        # step 4: the CSV logger has flushed the first logged step by then (it writes at its flush interval)
        while not (run_dir / "checkpoints" / "step000004.ckpt").exists() and proc.poll() is None:
            assert time.time() < deadline, "no checkpoint within 15 minutes"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = first_log.read_text()
    assert "voxfm: torch.compile of the views" in first and "objective + backbone" in first, first[-3000:]
    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "voxfm: resuming from" in resumed.stdout and f"voxfm: finished at step {max_steps}" in resumed.stdout
    for output in (first, resumed.stdout + resumed.stderr):
        assert "Recompiling" not in output, output[-3000:]
    compiled, eager = _losses(run_dir), _losses(eager_dir)
    first = min(eager)  # the first logged step: 0, or 1 after one update (AdamW's first step is nearly sign(g))
    assert first == log_every - 1 and max_steps - 1 in compiled
    assert compiled[first] == pytest.approx(eager[first], rel=1e-4 if first == 0 else 1e-3)
