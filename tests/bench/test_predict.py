"""`voxfm bench model predict=<card>`: the step's work counted on the CPU without running it, the roofline fitted on
the GPU rows of roofline.py, and the command's refusals."""

import contextlib
import dataclasses
import json
import typing

import pytest
import torch

from voxfm.pretrain.bench import predict as predict_module
from voxfm.pretrain.bench.count import StepCounter
from voxfm.pretrain.bench.model import voxfm_step
from voxfm.pretrain.bench.predict import calibration_error, count_work, fit, leave_one_out, predict, row_work, step_ms
from voxfm.pretrain.bench.roofline import CALIBRATION, CARDS, EFFICIENCY
from voxfm.pretrain.cli.compose import compose_config
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.config.commands import PredictCard


def _demo(*overrides: str, experiment: str = "demo"):
    return compose_config("pretrain", ["data.shards=unused", "run_dir=unused", f"experiment={experiment}", *overrides])


def test_counter_counts_flops_and_bytes_without_computing_large_outputs():
    x = torch.randn(64, 128, requires_grad=True)
    w = torch.randn(256, 128, requires_grad=True)
    with StepCounter() as counter:

        def step():
            y = torch.nn.functional.linear(x, w)  # [64, 256]
            (y * 2).sum().backward()

        work = counter.count(step, warmup=0)
        y = torch.nn.functional.linear(x, w)
        assert y.untyped_storage() in counter.no_values  # allocated from its meta kernel, never computed
    assert work.gemm_flop == 3 * 2 * 64 * 128 * 256  # forward, and the gradients of x and w
    assert work.conv_flop == work.attention_flop == 0
    assert work.launches >= 5 and work.bytes >= 64 * 256 * 4 * 2  # y * 2 alone reads and writes [64, 256] fp32


def test_extrapolated_work_matches_a_count_at_the_batch_itself():
    """Counted at batches 2 and 4 and put on their line: FLOPs exactly, bytes within the random noise draws."""
    work, views, who = count_work(_demo("data.batch_size=8"))
    assert who == "voxfm" and views == 8
    with StepCounter() as counter:
        step = voxfm_step(_demo("data.batch_size=8"), torch.device("cpu"), contextlib.nullcontext, False)[0]
        direct = counter.count(step, float_bytes=2)
    assert work.gemm_flop == pytest.approx(direct.gemm_flop, rel=1e-9)
    assert work.attention_flop == pytest.approx(direct.attention_flop, rel=1e-9)
    assert work.bytes == pytest.approx(direct.bytes, rel=0.05)
    assert abs(work.launches - direct.launches) <= 0.05 * direct.launches


def test_prediction_is_positive_splits_into_its_terms_and_grows_about_linearly_with_the_batch():
    small, large = predict(_demo("data.batch_size=64"), "h200"), predict(_demo("data.batch_size=128"), "h200")
    for r in (small, large):
        assert r["step_ms"] > 0 and r["samples_per_s"] > 0 and 0 < r["mfu"] < 1
        assert all(v >= 0 for v in r["breakdown_ms"].values())
        assert sum(r["breakdown_ms"].values()) == pytest.approx(r["step_ms"], rel=1e-3)
        assert r["samples_per_s"] == pytest.approx(r["views_per_step"] / r["step_ms"] * 1e3, rel=1e-3)
        assert r["gpu_hours"] == pytest.approx(r["wall_hours"] * 8, rel=1e-3)
        assert r["leave_one_out"] == calibration_error()
    variable = {k: large["breakdown_ms"][k] / small["breakdown_ms"][k] for k in ("gemm", "memory")}
    assert variable == pytest.approx({"gemm": 2.0, "memory": 2.0}, rel=0.05)  # per-sample work doubles
    assert large["breakdown_ms"]["launches"] == pytest.approx(small["breakdown_ms"]["launches"], rel=0.05)
    assert small["step_ms"] < large["step_ms"] < 2 * small["step_ms"]


def test_the_h200_is_never_slower_than_the_h100():
    work, _, _ = count_work(_demo("data.batch_size=32"))
    h100, h200 = step_ms(work, CARDS["h100"]), step_ms(work, CARDS["h200"])
    assert h200["step"] < h100["step"] and h200["memory"] < h100["memory"]
    assert h200["gemm"] == h100["gemm"]  # the same compute peak
    for row in CALIBRATION:
        assert step_ms(row_work(row), CARDS["h200"])["step"] <= step_ms(row_work(row), CARDS["h100"])["step"]


def test_leave_one_out_error_comes_from_the_calibration_rows_of_the_constants_file():
    fitted = dataclasses.asdict(fit(CALIBRATION))
    assert fitted == pytest.approx(dataclasses.asdict(EFFICIENCY), rel=1e-3)  # the constants: the fit of the rows
    errors = leave_one_out()
    assert [row for row, _ in errors] == list(CALIBRATION) and len(errors) >= 15
    row, error = errors[0]
    alone = fit(CALIBRATION[1:])
    assert error == pytest.approx(step_ms(row_work(row), CARDS[row.card], alone)["step"] / row.step_ms - 1)
    summary = calibration_error()
    assert summary["rows"] == len(CALIBRATION)
    assert summary["mean_abs"] == round(sum(abs(e) for _, e in errors) / len(errors), 3)
    assert summary["max_abs"] == round(max(abs(e) for _, e in errors), 3)
    slower = (dataclasses.replace(row, samples_per_s=row.samples_per_s / 2),) + CALIBRATION[1:]
    assert calibration_error(slower) != summary  # another measurement, another error


def test_card_names_are_the_schemas():
    assert typing.get_args(PredictCard) == tuple(CARDS)


def test_unknown_card_is_refused_in_one_line(capsys):
    assert main(["bench", "model", "experiment=demo", "predict=a100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "predict='a100'" in err and "h100" in err and "h200" in err
    with pytest.raises(ValueError, match="predict='a100'"):
        predict(_demo(), "a100")


def test_cli_prints_the_prediction_and_times_nothing(capsys):
    args = ["bench", "model", "experiment=demo", "predict=h100", "gpus=2", "trainer.max_steps=1000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert result["experiment"] == "demo" and result["card"] == CARDS["h100"].name and result["gpus"] == 2
    assert result["gpu_hours"] == pytest.approx(2 * 1000 * result["step_ms"] / 3.6e6, rel=1e-3)
    assert "eager" not in result and "reference" not in result  # no step was timed
    assert "leave-one-out" in out and "GPU-hours" in out and "GEMM" in out


def test_monai_reference_is_counted_with_the_gpus_fused_optimiser(monkeypatch):
    """reference.py fuses MONAI's AdamW on CUDA only; counted on the CPU, it is fused as on the GPU: one kernel for
    the update, not a handful per parameter. Self-distillation has no MONAI reference."""
    fused, views, who = count_work(_demo("data.batch_size=8"), reference=True)
    assert who == "MONAI MaskedAutoEncoderViT" and views == 8 and fused.gemm_flop > 0
    monkeypatch.setattr(predict_module, "_fused_as_on_cuda", lambda step: None)
    per_parameter, _, _ = count_work(_demo("data.batch_size=8"), reference=True)
    assert per_parameter.gemm_flop == fused.gemm_flop
    assert per_parameter.launches > fused.launches + 100  # MONAI's tiny ViT has dozens of parameter tensors
    assert count_work(_demo(experiment="demo_dino"), reference=True) is None
