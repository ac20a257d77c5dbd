# Everyday entry points. `make help` lists them.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
# Stage commands (`python stages/...`) must find the venv's python, also under dvc.
export PATH := $(BIN):$(PATH)

# The offline machines of this project keep a local MNIST mirror beside the repo; use it
# when present (an explicit MNIST_MIRROR=... still wins). Elsewhere the public mirrors serve.
LOCAL_MIRROR := $(abspath ../shared/mnist)
ifneq ($(wildcard $(LOCAL_MIRROR)/train-images-idx3-ubyte.gz),)
export MNIST_MIRROR ?= $(LOCAL_MIRROR)
endif

STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup browser lint format test test-fast repro bench bench-best bench-queue best \
        ui leaderboard sweep register predict reproduce lock clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

setup: $(STAMP) ## create .venv with the locked dependencies and the package

browser: ## install Debian's chromium for the UI test (needs root or sudo)
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

lint: setup ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup browser ## set up and run the whole test suite (includes real-data runs)
	$(BIN)/pytest

test-fast: setup ## the unit tier: no subprocess, about 30 s (tests/conftest.py enforces it)
	$(BIN)/pytest -m unit

repro: setup ## set up and run the pipeline on params.yaml (dvc repro)
	$(BIN)/dvc repro

bench: setup ## benchmark: cold/no-op/param-change repro vs a bare script, peak memory
	$(BIN)/python benchmarks/pipeline.py

bench-best: setup ## run the documented best configuration and print accuracy, time, memory
	$(BIN)/python benchmarks/best.py

bench-queue: setup ## queue throughput: 4 experiments on -j 2 against -j 1
	$(BIN)/python benchmarks/queue.py

best: setup ## run the best configuration (presets/best.yaml) as DVC experiment `best`
	$(BIN)/mnistflow best

ui: setup ## MLflow UI on the project's store, http://127.0.0.1:5000
	$(BIN)/mnistflow ui

leaderboard: setup ## write reports/leaderboard.md from the MLflow store
	$(BIN)/mnistflow leaderboard

sweep: setup ## queue the README's example grid and run it on two workers
	$(BIN)/dvc exp run --queue -S 'train.alpha=0.0001,0.001' \
	  -S 'train.hidden_layer_sizes=[100,50,25],[256,128]'
	$(BIN)/dvc queue start -j 2
	$(BIN)/mnistflow wait-queue
	$(BIN)/mnistflow leaderboard

register: setup ## register the best run as model mnist-mlp@champion
	$(BIN)/mnistflow register

predict: setup ## classify images with the champion: make predict IMAGES="a.png b.png"
	$(BIN)/mnistflow predict $(IMAGES)

reproduce: setup ## rerun a logged run and compare metrics: make reproduce RUN=<mlflow-run-id>
	$(BIN)/mnistflow reproduce $(RUN)

lock: ## re-resolve requirements.lock from pyproject.toml (needs network)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip && .lock-venv/bin/pip install --quiet -e '.[dev]'
	{ echo '# Exact versions for Python 3.11 (pip freeze). Regenerate with `make lock`.'; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock
	rm -rf .lock-venv

clean: ## remove pipeline outputs (not the DVC cache or the MLflow store)
	rm -rf data models outputs
