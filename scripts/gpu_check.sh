#!/usr/bin/env bash
# GPU check: everything that needs the accelerator, in one call, results under $OUT, a table last.
#   OUT=<dir> bash scripts/gpu_check.sh             # on the GPU: mae_vit_b bf16 200 steps + resume, bench model
#   OUT=<dir> TINY=1 bash scripts/gpu_check.sh      # rehearsal on CPU: demo twins, a few steps, tiny shapes
# Installs nothing: run it where `voxfm` is importable (python -m pretrain). Covers the bench models, DeepSpeed
# ZeRO-2/3, torch.compile, a fine-tune (finetune_resenc, pretrained vs scratch) and pretraining + resume.
set -euo pipefail
OUT=${OUT:?set OUT to a writable folder}
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT/bench"
if [ "${TINY:-0}" = 1 ]; then
  EXP=(experiment=demo data.num_workers=1); STEPS=20; MORE=30; N=6; SHAPE=48
  FT_PRE=(experiment=demo_mim data.num_workers=1); FT=(experiment=demo_finetune); FT_STEPS=10
  BENCH=("demo" "demo_mim" "demo_simclr" "demo_mae_contrastive")
  LARGE=("demo:data.batch_size=2")
  BENCH_ARGS=(warmup=1 steps=2)
else
  EXP=(experiment=mae_vit_b data.num_workers=12); STEPS=200; MORE=220; N=48; SHAPE=160
  FT_PRE=(experiment=mim_resenc_l data.num_workers=12); FT=(experiment=finetune_resenc); FT_STEPS=50
  BENCH=("mae_vit_b" "mae_primus_m" "mim_resenc_l" "simclr_resenc_l" "mae_contrastive_vit_b")
  # DESIGN.md's workloads: ViT-B MAE 96³ at batch 1024 (goal ≥ 9,000 samples/s), 160³ patch 8 at batch 8
  # (goal ≥ 100 samples/s) and 16 (goal: fits), ResEnc MIM 128³ at batch 4 (goal ≥ 1.4x DynUNet at equal FLOPs)
  LARGE=("mae_vit_b:data.batch_size=1024"
         "mae_vit_b:data.crop_size=[160,160,160] model.patch_size=8 data.batch_size=8"
         "mae_vit_b:data.crop_size=[160,160,160] model.patch_size=8 data.batch_size=16"
         "mim_resenc_l:data.crop_size=[128,128,128] data.batch_size=4")
  BENCH_ARGS=(warmup=3 steps=10)
fi
"$PY" -c "
from data.phantoms import write_phantoms
write_phantoms('$WORK/raw', n=$N, shape=($SHAPE, $SHAPE, $SHAPE))"
"$PY" -m pretrain shard input="$WORK/raw" output="$WORK/shards" progress=false | tee "$OUT/shard.txt"
"$PY" -m pretrain bench data shards="$WORK/shards" | tee "$OUT/bench_data.txt"
# one process per benchmark: an out-of-memory case is recorded, and the next starts on an empty card
i=0
for spec in "${BENCH[@]}" "${LARGE[@]}"; do
  exp=${spec%%:*}; extra=(); [ "$spec" != "$exp" ] && read -r -a extra <<< "${spec#*:}"
  i=$((i + 1))
  "$PY" -m pretrain bench model experiment="$exp" "${BENCH_ARGS[@]}" "${extra[@]}" \
    > "$OUT/bench/$i-$exp.txt" 2>&1 || echo "{\"experiment\": \"$exp\", \"failed\": true}" >> "$OUT/bench/$i-$exp.txt"
  echo "$exp ${extra[*]}" > "$OUT/bench/$i-$exp.args"
  tail -n 5 "$OUT/bench/$i-$exp.txt"
done
# DeepSpeed ZeRO-2/3 (bf16 on the GPU) and torch.compile: a short run each, samples/s from their metrics
for variant in "strategy=deepspeed_zero2" "strategy=deepspeed_zero3" "trainer.compile=true"; do
  name=$(echo "$variant" | tr -c 'a-z0-9_\n' '_')
  "$PY" -m pretrain pretrain "${EXP[@]}" data.shards="$WORK/shards" run_dir="$WORK/run_$name" $variant \
    trainer.max_steps=$STEPS trainer.log_every_n_steps=10 trainer.checkpoint_every_n_steps=$STEPS \
    trainer.progress_bar=false > "$OUT/variant_$name.txt" 2>&1 && echo "$variant: ok" || echo "$variant: FAILED"
  cp "$WORK/run_$name/metrics/version_0/metrics.csv" "$OUT/metrics_$name.csv" 2>/dev/null || true
done
# fine-tuning (bf16 on the GPU): a ResEnc pretrained a few steps, exported, then pretrained vs scratch on the
# labelled phantoms (finetune_resenc: the full ResEnc-L UNet, 160³)
"$PY" -m pretrain pretrain "${FT_PRE[@]}" data.shards="$WORK/shards" run_dir="$WORK/run_ft" trainer.max_steps=$FT_STEPS \
  trainer.progress_bar=false trainer.images_every_n_steps=0 > "$OUT/finetune_pretrain.txt" 2>&1 \
  && "$PY" -m pretrain export checkpoint="$WORK/run_ft" output="$WORK/ft_export" >> "$OUT/finetune_pretrain.txt" 2>&1 \
  && "$PY" -c "
import glob
rows = ['path,label'] + [f'{p},{p.replace(\".nii.gz\", \"_label.nii.gz\")}' for p in sorted(glob.glob('$WORK/raw/*.nii.gz'))
                         if '_label' not in p]
open('$WORK/labelled.csv', 'w').write('\\n'.join(rows) + '\\n')" \
  && "$PY" -m pretrain shard input="$WORK/labelled.csv" output="$WORK/labelled" progress=false >> "$OUT/finetune_pretrain.txt" \
  && "$PY" -m pretrain finetune "${FT[@]}" backbone="$WORK/ft_export" data.shards="$WORK/labelled" \
       run_dir="$WORK/finetune" compare_scratch=true steps=$FT_STEPS trainer.progress_bar=false > "$OUT/finetune.txt" 2>&1 \
  && cp "$WORK/finetune/results.json" "$WORK/finetune/results.md" "$OUT/" && echo "finetune: ok" || echo "finetune: FAILED"
run() { "$PY" -m pretrain pretrain "${EXP[@]}" data.shards="$WORK/shards" run_dir="$WORK/run" \
          trainer.log_every_n_steps=10 trainer.checkpoint_every_n_steps=100 trainer.progress_bar=false "$@"; }
start=$(date +%s); run trainer.max_steps=$STEPS 2>&1 | tail -n 20 > "$OUT/pretrain.txt"; train_s=$(( $(date +%s) - start ))
run trainer.max_steps=$MORE 2>&1 | tail -n 20 > "$OUT/resume.txt"
cp "$WORK/run/events.jsonl" "$WORK/run/config.yaml" "$OUT/"
cp "$WORK"/run/metrics/version_0/metrics.csv "$OUT/metrics.csv"
cp -r "$WORK/run/images" "$OUT/" 2>/dev/null || true
"$PY" - "$OUT" "$train_s" <<'PY'
import csv, glob, json, sys
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
benches = []
for path in sorted(glob.glob(f"{out}/bench/*.txt"), key=lambda p: int(p.split("/")[-1].split("-")[0])):
    args = open(path[:-4] + ".args").read().strip()
    lines = [line for line in open(path) if line.startswith("{")]
    result = json.loads(lines[0]) if lines else {"failed": True}
    benches.append({"args": args, **result})
    if result.get("failed"):
        table[f"bench {args}"] = "FAILED (see bench/)"
    else:
        v, r = result["voxfm"], result["reference"]
        monai = "out of memory" if r.get("out_of_memory") else r["samples_per_s"]
        table[f"bench {args}"] = (f"{v['samples_per_s']} samples/s, MFU {v['mfu']:.1%}, {v['peak_gib']} GiB | "
                                  f"MONAI {monai} | x{result['ratio_samples_per_s']} samples/s, "
                                  f"x{result['ratio_tflop_per_s']} TFLOP/s")
for path in sorted(glob.glob(f"{out}/metrics_*.csv")):
    rows = [r for r in csv.DictReader(open(path)) if r.get("train/samples_per_s")]
    half = [float(r["train/samples_per_s"]) for r in rows[len(rows) // 2:]]
    mfu = [float(r["train/mfu"]) for r in rows[len(rows) // 2:] if r.get("train/mfu")]
    name = path.split("metrics_")[-1][:-4]
    table[f"run {name}"] = (f"{sorted(half)[len(half) // 2]:.1f} samples/s, MFU {sorted(mfu)[len(mfu) // 2]:.1%}"
                            if half and mfu else "no metrics (see variant_*.txt)")
try:
    ft = json.load(open(f"{out}/results.json"))
    table["finetune (mean Dice)"] = ", ".join(f"{arm} {r['mean_dice']:.3f} in {r['wall_s']} s"
                                              for arm, r in ft["arms"].items())
except (OSError, ValueError, KeyError):
    table["finetune (mean Dice)"] = "FAILED (see finetune*.txt)"
json.dump({"table": table, "benches": benches}, open(f"{out}/gpu_check.json", "w"), indent=1)
print("\n".join(f"{k:<40}{v}" for k, v in table.items()))
PY
