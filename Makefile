# Two entry points: `make demo` and `make test`. Both create/update .venv from a clean clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-full test lint format clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned: the CPU build; an unpinned torch would pull several GB of CUDA wheels.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The demo: builds (or reuses) the toy policy, trains GRPO, GRPO-2K, P²O and P²O without distillation two at a
# time, writes runs/demo/ (README: how long it takes). demo-full adds Self-Ref, the fifth method.
DEMO_METHODS := grpo,grpo_2k,p2o_teacher,p2o_no_distill
demo: $(STAMP)
	$(BIN)/p2o demo --output-dir runs/demo --jobs 2 --methods $(DEMO_METHODS)

demo-full: $(STAMP)
	$(BIN)/p2o demo --output-dir runs/demo --jobs 2

# Two workers (TEST_JOBS=1 runs one): the suite's long tests wait on servers and subprocesses, so two
# share two cores well. The longest start first (tests/conftest.py) and each worker takes one test at
# a time from a shared queue (--maxschedchunk 1), so no long test waits behind another.
TEST_JOBS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --maxschedchunk 1

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
