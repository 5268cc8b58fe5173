#!/usr/bin/env bash
# Multi-node pretraining with torchrun: one process per GPU, Lightning reads torchrun's environment.
# Run the same line on every node (only NODE_RANK differs), all nodes seeing the same run_dir and shards:
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 GPUS_PER_NODE=8 scripts/torchrun.sh \
#     experiment=mae_vit_b data.shards=/data/shards run_dir=/runs/vitb optim.lr_scaling=linear
# Rerunning the same line after a crash or preemption resumes from the newest checkpoint in run_dir.
# STRATEGY picks conf/strategy/<name> (ddp, deepspeed_zero2, deepspeed_zero3); PYTHON the interpreter.
set -euo pipefail
: "${NNODES:=1}" "${NODE_RANK:=0}" "${MASTER_ADDR:=127.0.0.1}" "${MASTER_PORT:=29500}" "${STRATEGY:=ddp}"
# trainer.compile (the GPU experiments' default) caches its kernels here: a requeued or resumed job loads them
# instead of compiling again. A folder that outlives the node (the default /tmp/torchinductor_<user> does not).
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$HOME/.cache/voxfm/inductor}"
: "${GPUS_PER_NODE:=$(nvidia-smi -L 2>/dev/null | wc -l)}"
[ "$GPUS_PER_NODE" -gt 0 ] || { echo "torchrun.sh: no GPU found; set GPUS_PER_NODE (and trainer.accelerator=cpu)" >&2; exit 2; }
exec "${PYTHON:-python}" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
  --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m voxfm pretrain trainer.num_nodes="$NNODES" trainer.devices="$GPUS_PER_NODE" strategy="$STRATEGY" "$@"
