# Everyday entry points. `make help` lists them.
# Python 3.11, 3.12 or 3.13. Left empty, scripts/find-python picks $(VENV)'s own interpreter
# when the venv exists, else the first of python3.11, python3.12, python3.13, python3 that runs
# and is supported. PYTHON=python3.12 (or a path) names one instead.
PYTHON ?=
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
PYTHON_CANDIDATES = $(or $(PYTHON),$(wildcard $(BIN)/python) python3.11 python3.12 python3.13 python3)
# The PATH find-python searches: the caller's, without the venv put in front below.
HOST_PATH := $(PATH)
# Stage commands (`python stages/...`) must find the venv's python, also under dvc.
export PATH := $(BIN):$(PATH)

# uv installs the locked environment. It comes from PyPI at a pinned version, into a small venv
# of its own, outside the locked environment and shared by every $(VENV).
UV_VERSION := 0.13.9
UV_VENV    ?= .venv-uv
UV         := $(abspath $(UV_VENV))/bin/uv
UV_STAMP   := $(UV_VENV)/.uv-$(UV_VERSION)
# Use the interpreter found here, never one downloaded by uv; sync into $(VENV).
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

# The offline machines of this project keep a local MNIST mirror beside the repo; use it
# when present (an explicit MNISTFLOW_MIRROR=... still wins). Elsewhere the public mirrors serve.
LOCAL_MIRROR := $(abspath ../shared/mnist)
ifneq ($(wildcard $(LOCAL_MIRROR)/train-images-idx3-ubyte.gz),)
export MNISTFLOW_MIRROR ?= $(LOCAL_MIRROR)
endif

# The name changes when what setup installs changes, so an existing venv is synced again.
STAMP := $(VENV)/.installed-pyc

.DEFAULT_GOAL := help
.PHONY: help setup services lint format test test-fast repro bench bench-best bench-queue bench-store bench-team bench-team-load bench-tune bench-numerics best \
        ui leaderboard sweep tune register predict reproduce serve server push pull lock lock-upgrade lock-check clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(UV_STAMP):
	@py=$$(PATH='$(HOST_PATH)' scripts/find-python $(PYTHON_CANDIDATES)) && \
	  echo "installing uv==$(UV_VERSION) from PyPI into $(UV_VENV)/" && \
	  rm -rf $(UV_VENV) && "$$py" -m venv $(UV_VENV) && \
	  PIP_CONFIG_FILE=/dev/null $(UV_VENV)/bin/python -m pip install --quiet \
	    --index-url https://pypi.org/simple uv==$(UV_VERSION)
	@touch $@

# Exactly uv.lock (plus the dev extra and this package, editable); stale lock = error.
# --compile-bytecode: every process (CLI, dvc, each stage) reads ready .pyc files instead of
# compiling mlflow/sklearn/pandas from source, which halves their import time where Python may
# not write its cache (PYTHONDONTWRITEBYTECODE=1, a read-only venv); see docs/benchmarks.md.
$(STAMP): uv.lock pyproject.toml | $(UV_STAMP)
	@py=$$(PATH='$(HOST_PATH)' scripts/find-python $(PYTHON_CANDIDATES)) || exit 1; \
	  echo "$(UV) sync --locked --extra dev --compile-bytecode --python $$py  # into $(VENV)/"; \
	  $(UV) sync --locked --extra dev --compile-bytecode --python "$$py" || { \
	    echo "make setup: uv sync failed; if uv.lock is out of date, run make lock" >&2; exit 1; }
	@touch $@

setup: $(STAMP) ## create .venv (VENV=...) from uv.lock with a supported Python (PYTHON=...)

services: ## install what the tests start: Debian's chromium and postgresql (root or sudo)
	@missing=""; command -v chromium >/dev/null || missing="chromium"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing Debian packages:$$missing"; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	  fi
	@chromium --version
	@ls -d /usr/lib/postgresql/*/bin | tail -n 1

lint: setup ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup services ## set up and run the whole test suite (real data, PostgreSQL, browser)
	$(BIN)/pytest

test-fast: setup ## the unit tier: no subprocess, about 30 s (tests/conftest.py enforces it)
	$(BIN)/pytest -m unit

repro: setup ## set up and run the pipeline on params.yaml (dvc repro)
	$(BIN)/dvc repro

bench: setup ## benchmark: cold/no-op/param-change repro vs a bare script, peak memory
	$(BIN)/python benchmarks/pipeline.py

bench-numerics: setup ## the pinned floating-point environment's cost: fit time pinned vs native (~2 min)
	$(BIN)/python benchmarks/numerics.py

bench-best: setup ## the best preset (presets/best.yaml), cold: accuracy, pipeline time, peak memory
	$(BIN)/python benchmarks/best.py

bench-store: setup services ## leaderboard/register at 100 and 10,000 runs, sqlite and team server (UI: sqlite); dvc exp show/queue status at 10/50/100 exps
	$(BIN)/python benchmarks/store_growth.py

bench-team: setup services ## team server vs sqlite: logging overhead, 8 concurrent runs, sync of 100 runs
	$(BIN)/python benchmarks/team.py

bench-team-load: setup services ## team server under 4/16/64 concurrent writers, 1 and 2 server workers (~10 min)
	$(BIN)/python benchmarks/team_load.py

bench-queue: setup ## queue throughput: 4 experiments on -j 2 against -j 1
	$(BIN)/python benchmarks/queue_throughput.py

bench-tune: setup ## tuning: trials/hour on 1 and 2 workers (full data), overhead per trial, TPE vs random (3 seeds)
	$(BIN)/python benchmarks/tune.py

best: setup ## run the best configuration (presets/best.yaml) as DVC experiment `best`
	$(BIN)/mnistflow best

ui: setup ## MLflow UI on the project's store, http://127.0.0.1:5000
	$(BIN)/mnistflow ui

leaderboard: setup ## write reports/leaderboard.md from the MLflow store
	$(BIN)/mnistflow leaderboard

# The larger net first: DVC queues the grid's product in order (first -S outermost) and a
# worker takes the next when it is free, so 2 long fits then 2 short ones keep both workers
# busy to the end; short, long, short, long left one idle for a whole long fit.
sweep: setup ## queue the README's example grid and run it on two workers
	$(BIN)/dvc exp run --queue -S 'train.hidden_layer_sizes=[256,128],[100,50,25]' \
	  -S 'train.alpha=0.0001,0.001'
	$(BIN)/dvc queue start -j 2
	$(BIN)/mnistflow wait-queue
	$(BIN)/mnistflow leaderboard

tune: setup ## run (or join) the Optuna study of params.yaml's tune: section (docs/tuning.md)
	$(BIN)/mnistflow tune

register: setup ## register the best run as model mnist-mlp@champion
	$(BIN)/mnistflow register

predict: setup ## classify images with the champion: make predict IMAGES="a.png b.png"
	$(BIN)/mnistflow predict $(IMAGES)

serve: setup ## serve the champion model: POST images to http://127.0.0.1:5001/invocations
	$(BIN)/mnistflow serve

reproduce: setup ## rerun a logged run and compare metrics: make reproduce RUN=<mlflow-run-id>
	$(BIN)/mnistflow reproduce $(RUN)

server: setup ## a trial team server: PostgreSQL in PG_DIR (default .team-server), auth on
	$(BIN)/mnistflow server --pg-dir $(or $(PG_DIR),.team-server)

push: setup ## share outputs, cache and run-cache on the DVC remote (docs/team.md)
	$(BIN)/dvc push --run-cache

pull: setup ## fetch outputs and the run-cache from the DVC remote: no retraining
	$(BIN)/dvc pull --run-cache

# Only PyPI may appear in uv.lock, whatever indexes the environment names.
LOCK_ENV := env -u UV_INDEX -u UV_INDEX_URL -u UV_DEFAULT_INDEX -u UV_EXTRA_INDEX_URL -u UV_FIND_LINKS

lock: $(UV_STAMP) ## update uv.lock to pyproject.toml, keeping locked versions where they fit
	$(LOCK_ENV) $(UV) lock
	@$(MAKE) --no-print-directory lock-check

lock-upgrade: $(UV_STAMP) ## re-resolve uv.lock to the newest allowed versions (then test!)
	$(LOCK_ENV) $(UV) lock --upgrade
	@$(MAKE) --no-print-directory lock-check

lock-check: $(UV_STAMP) ## uv.lock is up to date with pyproject.toml and names no index but PyPI
	@! grep -n -e 'source = {' -e 'url = "' uv.lock | grep -v \
	  -e 'source = { registry = "https://pypi.org/simple" }' -e 'source = { editable = "." }' \
	  -e 'url = "https://files.pythonhosted.org/' | head -5 | grep . \
	  || { echo "uv.lock: lines like the above name something other than PyPI" >&2; exit 1; }
	$(UV) lock --check --offline

clean: ## remove pipeline outputs (not the DVC cache or the MLflow store)
	rm -rf data models outputs
