#!/usr/bin/env bash
# Wheels that the lent GPU machine (Python 3.12, x86-64, torch/lightning/einops/pillow already there, no
# internet) lacks for `make gpu-check`, downloaded here into .whl/ (ignored by git). Then, on the device:
#   carry .whl; command: bash scripts/gpu_lease.sh [BUDGET]   (installs them, runs the check, packs $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PACKAGES=(monai==1.6.1 hydra-core==1.3.8 omegaconf==2.3.1 webdataset==1.0.2
          braceexpand==0.1.7 nibabel==5.4.2 importlib-resources==7.1.0 blosc2==4.14.1 ndindex==1.10.1
          numexpr==2.14.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
          dynamic-network-architectures==0.4.4 hjson==3.1.0 pydicom==3.0.2 torchao==0.18.0
          typing-extensions==4.16.0)  # pydantic needs >= 4.16, newer than some images hold
PLATFORMS=()
for n in 2_28 2_27 2_24 2_17 2_5; do PLATFORMS+=(--platform "manylinux_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
${PYTHON:-python3} -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${PACKAGES[@]}"
# hydra needs antlr4 4.9.x and DeepSpeed ships only a source archive: build their pure-Python wheels here
# (DeepSpeed's ops are JIT-built on first use there, with the image's nvcc and ninja)
${PYTHON:-python3} -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 deepspeed==0.19.8
du -sh .whl
