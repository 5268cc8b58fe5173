#!/usr/bin/env bash
# On the lent GPU machine (python3 with torch and lightning, no internet): install the wheels that
# scripts/gpu_wheels.sh downloaded into .whl/, run the GPU check within BUDGET seconds, pack every result into
# $OUT/gpu_check.tgz (the device tool brings back at most 8 files) and print the table.
#   device run, carry [".whl"], timeout_s >= BUDGET + 60:   bash scripts/gpu_lease.sh [BUDGET]
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
# the checkout is the package `voxfm` (pyproject.toml: package-dir voxfm = .): a link named voxfm makes it importable
# without building it (the lent machine may lack setuptools' build dependencies)
mkdir -p /tmp/voxfm_root && ln -sfn "$PWD" /tmp/voxfm_root/voxfm
export PYTHONPATH=/tmp/site:/tmp/voxfm_root PYTHONUNBUFFERED=1 WANDB_MODE=offline
nvidia-smi -L
results=/tmp/gpu_check
mkdir -p "$results"
OUT=$results PYTHON=python3 BUDGET=${1:-480} bash scripts/gpu_check.sh > "$results/log.txt" 2>&1
tar czf "${OUT:?}/gpu_check.tgz" -C /tmp gpu_check
cp "$results/gpu_check.json" "$results/steps.txt" "$OUT/" 2>/dev/null
tail -n 60 "$results/log.txt"
