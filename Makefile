# voxfm — set-up, demo, tests. Everything runs inside .venv; `make demo` and `make test` need only Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
NNUNET_COMMANDS = acvl-utils==0.2.6 batchgeneratorsv2==0.3.6 scikit-image==0.26.0 scikit-learn==1.9.1 scipy==1.17.1 \
	simpleitk==2.5.7 pandas==3.1.1 seaborn==0.13.2 graphviz==0.21 tifffile==2026.3.3 imagecodecs==2026.3.6 \
	yacs==0.1.8 connected-components-3d==4.1.1 imageio==2.38.2 joblib==1.6.0 lazy-loader==0.6 narwhals==2.29.0 \
	threadpoolctl==3.8.0
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: help install demo test test-fast lint format bench gpu-check clean

help:   ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1\t\2/' | expand -t 22

$(BIN)/voxfm: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# torch first, pinned: otherwise lightning/deepspeed would pull a CUDA build (see README for GPUs)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	@# nnU-Net's networks without their timm pin, nnU-Net's own plans/weights loaders that the export tests
	@# call, and timm for the tests that build nnU-Net's Primus beside voxfm's (see pyproject.toml, extra
	@# "nnunet"): all without dependencies
	$(BIN)/pip install --quiet --no-deps -c $(CONSTRAINTS) "dynamic-network-architectures==0.4.4" \
		"nnunetv2==2.8.1" "batchgenerators==0.25.5" "timm==1.0.22"
	@# what nnU-Net's own commands import (nnUNetv2_plan_and_preprocess, nnUNetv2_train): a test runs the
	@# format=nnunet model card's commands as printed; without dependencies, as above
	$(BIN)/pip install --quiet --no-deps -c $(CONSTRAINTS) $(NNUNET_COMMANDS)
	@touch $@

install: $(BIN)/voxfm   ## .venv with the CPU torch pin, voxfm (editable) and nnU-Net's networks

demo: install   ## demo corpus -> shard -> inspect -> pretrain (tiny ViT MAE, CPU) -> export -> data bench
	rm -rf $(OUT)
	$(BIN)/python scripts/make_demo_corpus.py $(OUT)/raw
	$(BIN)/voxfm shard input=$(OUT)/raw/manifest.csv output=$(OUT)/shards
	$(BIN)/voxfm inspect shards=$(OUT)/shards n_samples=4
	$(BIN)/voxfm pretrain experiment=demo data.shards=$(OUT)/shards run_dir=$(OUT)/run
	$(BIN)/voxfm export checkpoint=$(OUT)/run output=$(OUT)/export
	$(BIN)/voxfm bench data shards=$(OUT)/shards
	@echo ""
	@echo "demo outputs:"
	@echo "  corpus      $(OUT)/raw/manifest.csv"
	@echo "  shards      $(OUT)/shards  (index.json, report.json, inspect/summary.json, inspect/montage.png)"
	@echo "  run         $(OUT)/run     (config.yaml, checkpoints/last.ckpt, metrics/metrics.csv, metrics.png, images/, events.jsonl)"
	@echo "  export      $(OUT)/export  (backbone.safetensors, backbone.json, README.md model card)"

# DeepSpeed JIT-builds its ops on first use (~1 min each): cached inside the environment, paid once per install
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

test: install   ## the whole suite (CPU)
	WANDB_MODE=offline $(BIN)/python -m pytest -q tests

test-fast: install   ## unit tests only (no slow or distributed marker): under 2 minutes on two cores
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow and not distributed" tests

lint: install   ## ruff check, and ruff format --check
	$(BIN)/ruff check __init__.py __main__.py pretrain models data scripts tests
	$(BIN)/ruff format --check __init__.py __main__.py pretrain models data scripts tests

format: install   ## ruff format and the import order ruff check fixes
	$(BIN)/ruff format __init__.py __main__.py pretrain models data scripts tests
	$(BIN)/ruff check --fix --select I __init__.py __main__.py pretrain models data scripts tests

bench: install   ## the data bench on the demo shards
	$(BIN)/voxfm bench data shards=$(OUT)/shards

gpu-check: install   ## on a GPU machine; TINY=1 rehearses it on CPU
	OUT=$${OUT:-out/gpu_check} PYTHON=$(abspath $(BIN)/python) bash scripts/gpu_check.sh

clean:   ## remove .venv, out/ and build files
	rm -rf $(VENV) out *.egg-info
