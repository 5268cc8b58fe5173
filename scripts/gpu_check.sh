#!/usr/bin/env bash
# GPU check: everything that needs the accelerator, in one call, results under $OUT, a table last.
#   OUT=<dir> bash scripts/gpu_check.sh             # on the GPU: mae_vit_b bf16 200 steps + resume, bench model/loop
#   OUT=<dir> TINY=1 bash scripts/gpu_check.sh      # rehearsal on CPU: demo twins, a few steps, tiny shapes
#   BUDGET=<s>                                      # stop starting steps after this many seconds (default: none)
# Installs nothing: run it where `voxfm` is importable (python -m voxfm); scripts/gpu_lease.sh installs the
# wheels on the lent machine first. Steps run most important first, each under the time left: the batch-1024
# ViT-B MAE step (eager and compiled beside MONAI, with a kernel profile), the SDPA backend microbenchmark, the
# rest of the workloads in README's Design section, pretrain's loop beside its bare step and an in-memory feed
# (bench loop, once the phantoms are sharded: mae_vit_b at per-GPU batch 1024 and 256, each with the device pool
# and with the host path), the data bench (host-cut vs device-cut feed: CPU cores per GPU), pretraining + resume,
# then DeepSpeed ZeRO-2/3, torch.compile, a fine-tune (pretrained vs scratch), the other bench models, and Gram
# anchoring and distillation (issue 29).
# steps.txt says how each step ended.
set -uo pipefail
OUT=${OUT:?set OUT to a writable folder}
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d)}
END=$(( $(date +%s) + ${BUDGET:-1000000} ))
mkdir -p "$OUT/bench"
if [ "${TINY:-0}" = 1 ]; then
  EXP=(experiment=demo data.num_workers=1); STEPS=20; MORE=30; VSTEPS=10; N=6; SHAPE=48
  FT_PRE=(experiment=demo_mim data.num_workers=1); FT=(experiment=demo_finetune); FT_STEPS=10
  BENCH=("demo" "demo_dino" "demo_mim" "demo_simclr" "demo_mae_contrastive" "demo_primus")
  LARGE=("demo:data.batch_size=2 profile=10 compile=true")  # inductor on CPU: tens of seconds, so only here
  BENCH_ARGS=(warmup=1 steps=2 compile=false)
  ATTENTION_ARGS=(warmup=1 steps=3)                     # CPU: shapes scaled down (conf/bench/attention.yaml)
  LOOP=("demo_b4_device_pool experiment=demo data.device_pool_gib=1"  # the batch-1024/256 pairs, at demo's 4 and 2
        "demo_b4_host experiment=demo data.device_pool_gib=0"
        "demo_b2_device_pool experiment=demo data.batch_size=2 data.device_pool_gib=1"
        "demo_b2_host experiment=demo data.batch_size=2 data.device_pool_gib=0"
        "demo_mim experiment=demo_mim")
  LOOP_ARGS=(warmup=2 steps=10)
  GRAM=("demo_dino_gram:objective.loss.gram.start_step=0"); TEACHER=(experiment=demo_dino data.num_workers=1)
  STUDENT=demo_distill
else
  EXP=(experiment=mae_vit_b data.num_workers=12); STEPS=200; MORE=220; VSTEPS=60; N=32; SHAPE=160
  FT_PRE=(experiment=mim_resenc_l data.num_workers=12); FT=(experiment=finetune_resenc); FT_STEPS=50
  # mae_primus_m twice: Primus-M, then a plain ViT at its sizes (what the EVA blocks and RoPE cost); dino_vit_b
  # beside mae_vit_b on the same ViT-B (a multi-crop DINO + iBOT step against an MAE step: the ratio to publish)
  BENCH=("mae_vit_b" "dino_vit_b" "mae_primus_m" "mae_primus_m:model=vit_m_p8 objective.views.masking.patch_size=8" "mim_resenc_l"
         "simclr_resenc_l" "mae_contrastive_vit_b")
  # README's Design workloads: ViT-B MAE 96³ at batch 1024 (goal ≥ 9,000 samples/s), 160³ patch 8 at batch 8
  # (goal ≥ 100 samples/s) and 16 (goal: fits), ResEnc MIM 128³ at batch 4 (goal ≥ 1.4x DynUNet at equal FLOPs)
  LARGE=("mae_vit_b:data.batch_size=1024 profile=30"  # + where its time goes (15% MFU on the H200)
         "mae_vit_b:data.crop_size=[160,160,160] model.patch_size=8 data.batch_size=8"
         "mae_vit_b:data.crop_size=[160,160,160] model.patch_size=8 data.batch_size=16"
         "mim_resenc_l:data.crop_size=[128,128,128] data.batch_size=4")
  BENCH_ARGS=(warmup=3 steps=10)
  ATTENTION_ARGS=()
  # "name overrides...": mae_vit_b at per-GPU batch 1024 (the issue's loop / bare ≥ 0.95) and 256, regions cut on
  # the device (a 16 GiB device pool) and on the host (data.device_pool_gib=0), then mim_resenc_l at its own batch;
  # 12 data workers (the experiments'); warm-up past compilation and the first logging step's graph
  LOOP=("mae_vit_b_b1024_device_pool experiment=mae_vit_b data.batch_size=1024 data.device_pool_gib=16"
        "mae_vit_b_b1024_host experiment=mae_vit_b data.batch_size=1024 data.device_pool_gib=0"
        "mae_vit_b_b256_device_pool experiment=mae_vit_b data.batch_size=256 data.device_pool_gib=16"
        "mae_vit_b_b256_host experiment=mae_vit_b data.batch_size=256 data.device_pool_gib=0"
        "mim_resenc_l experiment=mim_resenc_l")
  LOOP_ARGS=(warmup=10 steps=30)
  GRAM=("dino_vit_b_gram:objective.loss.gram.start_step=0"); TEACHER=(experiment=dino_vit_b data.num_workers=12)
  STUDENT=distill_vit_s
fi

# T NEED NAME CMD...: CMD under the time left, output to $OUT/NAME.txt, its ending to steps.txt;
# not started (exit 125) with under NEED seconds left
T() {
  local need=$1 name=$2; shift 2
  local left=$(( END - $(date +%s) ))
  if [ "$left" -lt "$need" ]; then echo "$name: not started (${left} s left)" | tee -a "$OUT/steps.txt"; return 125; fi
  local start; start=$(date +%s)
  timeout -k 10 "$left" "$@" >> "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: $([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)") in $(( $(date +%s) - start )) s" \
    | tee -a "$OUT/steps.txt"
  return $rc
}

# bench SPEC...: `voxfm bench model` per "experiment[:overrides]", one process each: an out-of-memory case is
# recorded, and the next starts on an empty card
i=0
bench() {
  for spec in "$@"; do
    exp=${spec%%:*}; extra=(); [ "$spec" != "$exp" ] && read -r -a extra <<< "${spec#*:}"
    i=$((i + 1))
    echo "$exp ${extra[*]}" > "$OUT/bench/$i-$exp.args"
    T 40 "bench/$i-$exp" "$PY" -m voxfm bench model experiment="$exp" "${BENCH_ARGS[@]}" "${extra[@]}"
    case $? in 0) ;; 125) echo '{"not_started": true}' >> "$OUT/bench/$i-$exp.txt" ;;
      *) echo '{"failed": true}' >> "$OUT/bench/$i-$exp.txt" ;; esac
  done
}

# phantoms (images.csv: the images; labelled.csv: images + labels, for fine-tuning) sharded on half the cores
# while the benchmark workloads (synthetic batches) run on the GPU
( "$PY" -c "
from voxfm.data.phantoms import write_phantoms
images = [str(p) for p in write_phantoms('$WORK/raw', n=$N, shape=($SHAPE, $SHAPE, $SHAPE))]
open('$WORK/images.csv', 'w').write('\\n'.join(['path', *images]) + '\\n')
labelled = [f'{p},{p.replace(\".nii.gz\", \"_label.nii.gz\")}' for p in images]
open('$WORK/labelled.csv', 'w').write('\\n'.join(['path,label', *labelled]) + '\\n')" \
  && T 30 shard "$PY" -m voxfm shard input="$WORK/images.csv" output="$WORK/shards" progress=false \
       workers=$(( ($(nproc) + 1) / 2 )) ) &
sharding=$!
bench "${LARGE[0]}"
T 40 bench_attention "$PY" -m voxfm bench attention "${ATTENTION_ARGS[@]}"  # the SDPA backend per shape
bench "${LARGE[@]:1}"
wait $sharding || { echo "sharding the phantoms failed: see shard.txt"; "$PY" "$(dirname "$0")/gpu_table.py" "$OUT"; exit 1; }

# the one-copy feed: device batches equal to the host's, no hidden sync, threaded workers stop cleanly
T 30 device_feed "$PY" scripts/check_device_feed.py "$WORK/shards"

# pretrain's loop with the real loader on the phantoms, beside its bare step and an in-memory feed
for spec in "${LOOP[@]}"; do
  read -r -a loop <<< "$spec"
  T 90 "bench_loop_${loop[0]}" "$PY" -m voxfm bench loop "${loop[@]:1}" shards="$WORK/shards" "${LOOP_ARGS[@]}"
done

# the feed's host cost on this machine's cores: regions cut on the host vs on the device (the meta device)
T 20 bench_data "$PY" -m voxfm bench data shards="$WORK/shards"

# pretraining and its resume
pretrain_run() { T "$1" "$2" "$PY" -m voxfm pretrain "${EXP[@]}" data.shards="$WORK/shards" run_dir="$WORK/run" \
  trainer.log_every_n_steps=10 trainer.checkpoint_every_n_steps=100 trainer.progress_bar=false "${@:3}"; }
start=$(date +%s)
pretrain_run 60 pretrain trainer.max_steps=$STEPS && echo $(( $(date +%s) - start )) > "$OUT/train_s.txt" \
  && pretrain_run 30 resume trainer.max_steps=$MORE
cp "$WORK/run/events.jsonl" "$WORK/run/config.yaml" "$OUT/" 2>/dev/null
cp "$WORK/run/metrics/metrics.csv" "$OUT/metrics.csv" 2>/dev/null
cp -r "$WORK/run/images" "$OUT/" 2>/dev/null

# DeepSpeed ZeRO-2/3 (bf16 on the GPU) and torch.compile: a short run each, samples/s from their metrics
for variant in "strategy=deepspeed_zero2" "strategy=deepspeed_zero3" "trainer.compile=true"; do
  name=$(echo "$variant" | tr -c 'a-z0-9_\n' '_')
  T 60 "variant_$name" "$PY" -m voxfm pretrain "${EXP[@]}" data.shards="$WORK/shards" run_dir="$WORK/run_$name" \
    $variant trainer.max_steps=$VSTEPS trainer.log_every_n_steps=5 trainer.checkpoint_every_n_steps=$VSTEPS \
    trainer.progress_bar=false
  cp "$WORK/run_$name/metrics/metrics.csv" "$OUT/metrics_$name.csv" 2>/dev/null
done

# bf16 against FP8 linears (trainer.fp8, torchao rowwise): 300 compiled steps each, their loss curves side by side
# (bf16_vs_fp8.png) and samples/s from their metrics; GPU only (a CPU refuses trainer.fp8 before launch)
if [ "${TINY:-0}" != 1 ]; then
  for fp8 in false true; do
    T 120 "fp8_$fp8" "$PY" -m voxfm pretrain "${EXP[@]}" data.shards="$WORK/shards" run_dir="$WORK/run_fp8_$fp8" \
      trainer.compile=true trainer.fp8=$fp8 trainer.max_steps=300 trainer.log_every_n_steps=10 \
      trainer.checkpoint_every_n_steps=300 trainer.progress_bar=false trainer.images_every_n_steps=0
    cp "$WORK/run_fp8_$fp8/metrics/metrics.csv" "$OUT/metrics_fp8_$fp8.csv" 2>/dev/null
  done
  "$PY" -m voxfm plot run_dir="[$WORK/run_fp8_false,$WORK/run_fp8_true]" output="$OUT/bf16_vs_fp8.png" \
    >> "$OUT/fp8_true.txt" 2>&1
fi

# fine-tuning (bf16 on the GPU): a ResEnc pretrained a few steps, exported, then pretrained vs scratch on the
# labelled phantoms (finetune_resenc: the full ResEnc-L UNet, 160³)
T 90 finetune_pretrain "$PY" -m voxfm pretrain "${FT_PRE[@]}" data.shards="$WORK/shards" run_dir="$WORK/run_ft" \
    trainer.max_steps=$FT_STEPS trainer.progress_bar=false trainer.images_every_n_steps=0 \
  && T 60 finetune_pretrain "$PY" -m voxfm export checkpoint="$WORK/run_ft" output="$WORK/ft_export" \
  && T 60 finetune_pretrain "$PY" -m voxfm shard input="$WORK/labelled.csv" output="$WORK/labelled" progress=false \
  && T 60 finetune "$PY" -m voxfm finetune "${FT[@]}" backbone="$WORK/ft_export" data.shards="$WORK/labelled" \
       run_dir="$WORK/finetune" compare_scratch=true steps=$FT_STEPS trainer.progress_bar=false \
  && cp "$WORK/finetune/results.json" "$WORK/finetune/results.md" "$OUT/"

bench "${BENCH[@]}"

# DINOv3's additions beside mae_vit_b and dino_vit_b: Gram anchoring on from the first step, and distillation into
# a ViT-S from a dino_vit_b teacher (a 2-step run's format=full export: its weights do not change a step's time)
bench "${GRAM[@]}"
T 60 distill_teacher "$PY" -m voxfm pretrain "${TEACHER[@]}" data.shards="$WORK/shards" run_dir="$WORK/run_teacher" \
    trainer.max_steps=2 trainer.progress_bar=false trainer.images_every_n_steps=0 \
  && T 40 distill_teacher "$PY" -m voxfm export checkpoint="$WORK/run_teacher" output="$WORK/teacher" format=full \
  && bench "$STUDENT:objective.loss.teacher=$WORK/teacher"
"$PY" "$(dirname "$0")/gpu_table.py" "$OUT"
