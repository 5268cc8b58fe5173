# voxfm — set-up, demo, tests. Everything runs inside .venv; `make demo` and `make test` need only Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: install demo test test-fast lint bench gpu-check clean

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
	@touch $@

install: $(BIN)/voxfm

demo: install
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
	@echo "  run         $(OUT)/run     (config.yaml, checkpoints/last.ckpt, metrics/, images/, events.jsonl)"
	@echo "  export      $(OUT)/export  (backbone.safetensors, backbone.json, README.md model card)"

# DeepSpeed JIT-builds its ops on first use (~1 min each): cached inside the environment, paid once per install
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

test: install
	WANDB_MODE=offline $(BIN)/python -m pytest -q tests

test-fast: install   # unit tests only (no slow or distributed marker): under 2 minutes on two cores
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow and not distributed" tests

lint: install
	$(BIN)/ruff check __init__.py __main__.py pretrain models data scripts tests

bench: install
	$(BIN)/voxfm bench data shards=$(OUT)/shards

gpu-check: install   # on a GPU machine; TINY=1 rehearses it on CPU
	OUT=$${OUT:-out/gpu_check} PYTHON=$(abspath $(BIN)/python) bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) out *.egg-info
