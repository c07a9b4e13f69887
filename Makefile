# The two commands of the README: `make run` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATENTFLOW_HOME ?= $(CURDIR)/.patentflow

.PHONY: setup run test ui search lint bench bench-retrieval bench-retrieval-real clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned, so that nothing pulls a multi-GB CUDA build (STACK.md)
	$(BIN)/pip install -q torch==2.13.0
	# constraints.txt is the frozen, tested set (pip check clean); pyproject holds the pins.
	# DS_BUILD_OPS=0: deepspeed installs as pure Python and JIT-builds what it needs.
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)
	./scripts/ensure-system-deps.sh

run: setup
	$(BIN)/patentflow run

test: setup
	./scripts/ensure-system-deps.sh --test
	# one worker per core; a test file's tests stay on one worker, so module fixtures are built once
	$(BIN)/pytest -n auto --dist loadfile

ui: setup
	$(BIN)/patentflow ui

# the prior-art search page on http://127.0.0.1:8000 over the pipeline's index (after make run)
search: setup
	$(BIN)/patentflow serve

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/data_pipeline.py

bench-retrieval: $(STAMP)
	$(BIN)/python benchmarks/retrieval_index.py

# the figure encoder on real drawings (needs ../shared/realdata) and its CPU cost
bench-retrieval-real: setup
	$(BIN)/python benchmarks/retrieval_real.py
	$(BIN)/python benchmarks/retrieval_encoder_speed.py

clean:
	rm -rf .patentflow
