#!/usr/bin/env bash
# GPU check: everything that needs the accelerator, in one call, results under $OUT, a table last.
#   OUT=<dir> bash scripts/gpu_check.sh             # on the GPU: mae_vit_b in bf16, 200 steps, then resume
#   OUT=<dir> TINY=1 bash scripts/gpu_check.sh      # rehearsal on CPU: demo experiment, a few steps
# Installs nothing: run it where `voxfm` is importable (python -m pretrain). Not yet covered here:
# DeepSpeed ZeRO-2/3 and torch.compile, which arrive with their own issues.
set -euo pipefail
OUT=${OUT:?set OUT to a writable folder}
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
if [ "${TINY:-0}" = 1 ]; then
  EXP=(experiment=demo data.num_workers=1); STEPS=20; MORE=30; N=6; SHAPE=48
else
  EXP=(experiment=mae_vit_b data.num_workers=12); STEPS=200; MORE=220; N=48; SHAPE=160
fi
"$PY" -c "
from data.phantoms import write_phantoms
write_phantoms('$WORK/raw', n=$N, shape=($SHAPE, $SHAPE, $SHAPE))"
"$PY" -m pretrain shard input="$WORK/raw" output="$WORK/shards" progress=false | tee "$OUT/shard.txt"
"$PY" -m pretrain bench data shards="$WORK/shards" | tee "$OUT/bench_data.txt"
run() { "$PY" -m pretrain pretrain "${EXP[@]}" data.shards="$WORK/shards" run_dir="$WORK/run" \
          trainer.log_every_n_steps=10 trainer.checkpoint_every_n_steps=100 trainer.progress_bar=false "$@"; }
start=$(date +%s); run trainer.max_steps=$STEPS 2>&1 | tail -n 20 > "$OUT/pretrain.txt"; train_s=$(( $(date +%s) - start ))
run trainer.max_steps=$MORE 2>&1 | tail -n 20 > "$OUT/resume.txt"
cp "$WORK/run/events.jsonl" "$WORK/run/config.yaml" "$OUT/"
cp "$WORK"/run/metrics/version_0/metrics.csv "$OUT/metrics.csv"
"$PY" - "$OUT" "$train_s" <<'PY'
import csv, json, sys
out, train_s = sys.argv[1], int(sys.argv[2])
rows = [r for r in csv.DictReader(open(f"{out}/metrics.csv")) if r.get("train/samples_per_s")]
rates = [float(r["train/samples_per_s"]) for r in rows[len(rows) // 2:]]  # second half: warmed up
events = [json.loads(line) for line in open(f"{out}/events.jsonl")]
import torch
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
resumed = [e for e in events if e["event"] == "resume"]
table = {
    "device": device,
    "steps, first run": events[1]["step"] if len(events) > 1 else None,
    "samples/s (median, 2nd half)": round(sorted(rates)[len(rates) // 2], 1) if rates else None,
    "wall s, first run": train_s,
    "resumed at step": resumed[0]["step"] if resumed else None,
    "final step": events[-1]["step"],
}
json.dump(table, open(f"{out}/gpu_check.json", "w"), indent=1)
print("\n".join(f"{k:<32}{v}" for k, v in table.items()))
PY
