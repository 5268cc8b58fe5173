"""The GPU check's table from what scripts/gpu_check.sh left in OUT; a part that did not run (failed, out of
time) says so instead of stopping the table. Writes OUT/gpu_check.json and prints the table.

  python scripts/gpu_table.py OUT
"""

from __future__ import annotations

import csv
import glob
import json
import sys
from pathlib import Path


def median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def second_half(path: Path, key: str) -> list[float]:
    """Values of `key` over the second half of a metrics.csv (warmed up)."""
    if not path.exists():
        return []
    rows = [r for r in csv.DictReader(path.open()) if r.get("train/samples_per_s")]
    return [float(r[key]) for r in rows[len(rows) // 2 :] if r.get(key)]


def pretraining(out: Path) -> dict:
    events_file = out / "events.jsonl"
    if not events_file.exists():
        return {"pretrain + resume": "did not run (see steps.txt, pretrain.txt)"}
    events = [json.loads(line) for line in events_file.open()]
    ends = [e["step"] for e in events if e["event"] == "end"]
    resumed = [e["step"] for e in events if e["event"] == "resume"]
    rate, mfu = (
        median(second_half(out / "metrics.csv", "train/samples_per_s")),
        median(second_half(out / "metrics.csv", "train/mfu")),
    )
    return {
        "pretrain: samples/s, MFU (median, 2nd half)": f"{rate and round(rate, 1)}, {mfu and f'{mfu:.1%}'}",
        "pretrain: wall s, first run": (out / "train_s.txt").read_text().strip()
        if (out / "train_s.txt").exists()
        else None,
        "pretrain: end steps, resumed at": f"{ends}, {resumed}",
    }


def benches(out: Path) -> tuple[dict, list]:
    table, results = {}, []
    for path in sorted(glob.glob(f"{out}/bench/*.txt"), key=lambda p: int(Path(p).name.split("-")[0])):
        args = Path(path[:-4] + ".args").read_text().strip() if Path(path[:-4] + ".args").exists() else path
        lines = [line for line in open(path) if line.startswith("{")]
        result = json.loads(lines[0]) if lines else {"failed": True}
        results.append({"args": args, **result})
        if result.get("not_started"):
            table[f"bench {args}"] = "not started (out of time)"
            continue
        if result.get("failed") or "eager" not in result:
            table[f"bench {args}"] = "FAILED (see bench/)"
            continue
        e, c, r = result["eager"], result["compiled"], result["reference"]
        gib = {
            name: "-" if row is None or row.get("peak_gib") is None else row["peak_gib"]
            for name, row in (("eager", e), ("compiled", c))
        }
        monai = "out of memory" if r.get("out_of_memory") else ("none" if r.get("absent") else r["samples_per_s"])
        compiled = (
            "compiled not run"
            if c is None
            else (
                f"compiled {c['samples_per_s']} (MFU {c['mfu']:.1%}, {gib['compiled']} GiB, "
                f"compile {c['compile_s']} s, x{result['compiled_vs_eager']} eager)"
            )
        )
        table[f"bench {args}"] = (
            f"eager {e['samples_per_s']} samples/s (MFU {e['mfu']:.1%}, {gib['eager']} GiB) | "
            f"{compiled} | reference {monai} | vs reference x{result['ratio_samples_per_s']} "
            f"samples/s, x{result['ratio_tflop_per_s']} TFLOP/s"
        )
    return table, results


def attention(out: Path) -> tuple[dict, dict | None]:
    """The SDPA microbenchmark: the fastest backend per shape, its ms and TFLOP/s."""
    path = out / "bench_attention.txt"
    lines = [line for line in path.open() if line.startswith("{")] if path.exists() else []
    if not lines:
        return {"attention (fastest backend per shape)": "did not run (see bench_attention.txt, steps.txt)"}, None
    result = json.loads(lines[0])
    table = {}
    for shape, backend in result["best"].items():
        row = next((r for r in result["rows"] if r["shape"] == shape and r["backend"] == backend), None)
        table[f"attention {shape}"] = (
            "no backend ran"
            if row is None
            else f"{backend} {row['ms']} ms, {row['tflop_per_s']} TFLOP/s at {row['size']}"
        )
    return table, result


def loops(out: Path) -> tuple[dict, list]:
    """`voxfm bench loop` per experiment: the three rates, loop / bare, the feed's wait and reads, host memory."""
    table, results = {}, []
    for path in sorted(out.glob("bench_loop_*.txt")):
        name = path.stem.removeprefix("bench_loop_")
        lines = [line for line in path.open() if line.startswith("{")]
        if not lines:
            table[f"loop {name}"] = f"did not finish (see {path.name}, steps.txt)"
            continue
        r = json.loads(lines[0])
        results.append(r)
        b, loop, s = r["bare"], r["loop"], r["synthetic"]
        table[f"loop {name} (samples/s)"] = (
            f"bare {b['samples_per_s']} | loop {loop['samples_per_s']} | in-memory "
            f"feed {s['samples_per_s']} | loop / bare x{r['loop_vs_bare']}"
        )
        table[f"loop {name} (feed)"] = (
            f"data wait {loop['data_wait']:.1%}, {loop['shard_gb_per_s']} shard GB/s, "
            f"{loop['regions_per_read']} regions/read, host peak {loop['host_peak_gib']} "
            f"GiB (in-memory feed {s['host_peak_gib']} GiB)"
        )
    return table, results


def variants(out: Path) -> dict:
    table = {}
    for path in sorted(out.glob("metrics_*.csv")):
        rate, mfu = median(second_half(path, "train/samples_per_s")), median(second_half(path, "train/mfu"))
        name = path.stem.removeprefix("metrics_")
        table[f"run {name}"] = (
            f"{rate:.1f} samples/s, MFU {mfu:.1%}" if rate and mfu else "no metrics (see variant_*.txt)"
        )
    return table


def finetune(out: Path) -> dict:
    try:
        arms = json.loads((out / "results.json").read_text())["arms"]
        return {
            "finetune (mean Dice)": ", ".join(
                f"{arm} {r['mean_dice']:.3f} in {r['wall_s']} s" for arm, r in arms.items()
            )
        }
    except (OSError, ValueError, KeyError):
        return {"finetune (mean Dice)": "did not finish (see finetune*.txt)"}


def main(out: Path) -> None:
    import torch

    table = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    table.update(pretraining(out))
    bench_table, bench_results = benches(out)
    table.update(bench_table)
    attention_table, attention_result = attention(out)
    table.update(attention_table)
    loop_table, loop_results = loops(out)
    table.update(loop_table)
    table.update(variants(out))
    table.update(finetune(out))
    if (out / "steps.txt").exists():
        table["steps"] = "; ".join(line.strip() for line in (out / "steps.txt").open())
    (out / "gpu_check.json").write_text(
        json.dumps(
            {"table": table, "benches": bench_results, "attention": attention_result, "loops": loop_results}, indent=1
        )
    )
    print("\n".join(f"{k:<44} {v}" for k, v in table.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
