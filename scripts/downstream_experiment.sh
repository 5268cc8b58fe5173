#!/usr/bin/env bash
# Pretrained vs scratch, few-shot, on the real labelled scans (BENCHMARKS.md, "Downstream"): pretrain the tiny
# ResEnc (demo_mim) on the demo corpus + the real images, export it, then fine-tune each real task from it and
# from scratch at equal steps, for several seeds. Usage: VOXFM_REAL_DATA=<dir> bash scripts/downstream_experiment.sh
# [out_dir] [pretrain_steps] [finetune_steps] [seeds]
set -euo pipefail
R=${VOXFM_REAL_DATA:?set VOXFM_REAL_DATA to the folder of real scans}
OUT=${1:-out/downstream}; STEPS=${2:-2400}; FT_STEPS=${3:-150}; SEEDS=${4:-"0 1 2"}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
"$PY" scripts/make_demo_corpus.py "$OUT/raw" > /dev/null
printf "path,modality\n%s,CT\n%s,MR\n%s,MR\n" "$R/ct_head_invesalius.nii.gz" "$R/mri_t1_colin27_ch2.nii.gz" \
  "$R/mri_t1_itk_kmeans.nii.gz" > "$OUT/real_images.csv"
"$PY" -m voxfm shard input="$OUT/raw/manifest.csv" output="$OUT/shards" progress=false
"$PY" -m voxfm shard input="$OUT/real_images.csv" output="$OUT/shards" progress=false
start=$(date +%s)
"$PY" -m voxfm pretrain experiment=demo_mim data.shards="$OUT/shards" run_dir="$OUT/pretrain" \
  trainer.max_steps="$STEPS" trainer.progress_bar=false trainer.images_every_n_steps=0 > "$OUT/pretrain.log" 2>&1
echo "pretraining: $STEPS steps in $(( $(date +%s) - start )) s"
"$PY" -m voxfm export checkpoint="$OUT/pretrain" output="$OUT/export"
declare -A IMAGE=([ct]=ct_head_invesalius [aal]=mri_t1_colin27_ch2 [kmeans]=mri_t1_itk_kmeans)
declare -A LABEL=([ct]=ct_head_invesalius_label [aal]=mri_t1_colin27_ch2_aal_label [kmeans]=mri_t1_itk_kmeans_label)
declare -A MOD=([ct]=CT [aal]=MR [kmeans]=MR)
for task in ct aal kmeans; do
  printf "path,modality,label\n%s,%s,%s\n" "$R/${IMAGE[$task]}.nii.gz" "${MOD[$task]}" "$R/${LABEL[$task]}.nii.gz" \
    > "$OUT/$task.csv"
  "$PY" -m voxfm shard input="$OUT/$task.csv" output="$OUT/labelled_$task" progress=false > /dev/null
  for seed in $SEEDS; do
    "$PY" -m voxfm finetune experiment=demo_finetune backbone="$OUT/export" data.shards="$OUT/labelled_$task" \
      run_dir="$OUT/finetune_${task}_seed$seed" compare_scratch=true seed="$seed" steps="$FT_STEPS" \
      trainer.progress_bar=false > "$OUT/finetune_${task}_seed$seed.log" 2>&1
  done
done
"$PY" - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| task | pretrained mean Dice (mean ± sd over seeds) | scratch | seeds |")
print("|---|---|---|---|")
for task in ("ct", "aal", "kmeans"):
    runs = [json.loads(p.read_text()) for p in sorted(out.glob(f"finetune_{task}_seed*/results.json"))]
    arms = {a: [r["arms"][a]["mean_dice"] for r in runs] for a in ("pretrained", "scratch")}
    cell = lambda v: f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"
    print(f"| {task} | {cell(arms['pretrained'])} | {cell(arms['scratch'])} | {len(runs)} |")
PY
