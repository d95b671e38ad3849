# Driftloop: the two commands a new machine needs are `make demo` and `make test`.
# Both create the locked virtual environment (.venv) themselves, installing uv
# with pip first when it is not on PATH.

SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --locked --no-sync
export UV_PYTHON_DOWNLOADS ?= never

.PHONY: help venv test test-unit test-integration faults lint protos protos-check demo up status clean

help:
	@echo "make demo   - run the whole loop on the embedded defaults"
	@echo "make test   - unit, integration and end-to-end tests (what CI runs)"
	@echo "make faults - the fault suite alone, with its figures"
	@echo "make lint   - ruff and mypy over libs and services"
	@echo "make protos - regenerate the committed stubs in libs/driftloop-protos"

.venv/.synced: pyproject.toml uv.lock $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --locked --all-packages
	@touch $@

venv: .venv/.synced

# Workers for pytest-xdist: one runs the end-to-end tests one after another (each
# starts a whole stack), the other everything else; more would starve the stacks.
TEST_WORKERS ?= 2

test: venv
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadgroup

test-unit: venv
	$(RUN) pytest -m "not integration and not e2e"

test-integration: venv
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadgroup -m "integration or e2e"

# The fault suite alone (also part of `make test`), its figures printed at the end.
faults: venv
	FAULTS_SUMMARY=1 $(RUN) pytest tests/faults -p no:xdist

lint: venv
	$(RUN) ruff check libs services tests loadtests scripts
	$(RUN) ruff format --check libs services tests loadtests scripts
	$(RUN) mypy libs/driftloop-core/src libs/driftloop-cli/src libs/driftloop-testing/src $(wildcard services/*/src)

protos: venv
	$(RUN) python scripts/gen_protos.py

protos-check: venv
	$(RUN) python scripts/gen_protos.py --check

demo: venv
	$(RUN) driftloop demo

up: venv
	$(RUN) driftloop up

status: venv
	$(RUN) driftloop status

clean:
	rm -rf .venv .driftloop demo-report .pytest_cache .mypy_cache .ruff_cache

# Inference speed against MLServer 1.7.1 (kept in its own venv, .bench/mlserver-venv,
# made on first use). BENCH_ARGS passes options, e.g. BENCH_ARGS="--seconds 5".
# h2load (Debian nghttp2-client) is the second client; installed here when apt can.
.PHONY: bench-inference
bench-inference: venv
	@command -v h2load >/dev/null || ! command -v apt-get >/dev/null || \
		apt-get install -y -qq nghttp2-client >/dev/null 2>&1 || \
		(apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nghttp2-client >/dev/null 2>&1) || \
		echo "h2load could not be installed (needs root): its cells will be skipped"
	$(RUN) python loadtests/inference_benchmark.py $(BENCH_ARGS)
