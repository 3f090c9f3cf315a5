# minikv: every target sets up .venv itself, so a fresh clone needs only `make test`.
# Stamps record what was installed from which pyproject.toml, so re-running is quick.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.stamp-runtime
DEV_STAMP     := $(VENV)/.stamp-dev
PROTO_DIR     := minikv_core/net/proto
PROTOS        := $(wildcard $(PROTO_DIR)/*.proto)
PYTEST_ARGS   ?=
# Two workers, a test file each at a time: most multi-process tests wait on Raft timers, so
# two overlap well on two cores (16 min serially, 10.5 min so, on this machine).
PYTEST_WORKERS ?= 2

.PHONY: tui test test-slow lint bench bench-etcd screenshots proto clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "minikv needs Python >= 3.11; set PYTHON=python3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The install also compiles the storage's C loops (hatch_build.py): rebuilt when they change.
SPEEDUPS := hatch_build.py minikv_core/storage/_speedups.c

$(RUNTIME_STAMP): pyproject.toml $(SPEEDUPS) | $(PY)
	$(PY) -m pip install --quiet -e .
	@touch $@

$(DEV_STAMP): pyproject.toml $(SPEEDUPS) | $(PY)
	$(PY) -m pip install --quiet -e '.[test,dev]'
	@touch $@ $(RUNTIME_STAMP)

tui: $(RUNTIME_STAMP)
	$(BIN)/minikv tui

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The long runs: thousands of simulator steps per seed, and the other `slow`-marked tests.
test-slow: $(DEV_STAMP)
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

# Benchmarks print comparable numbers (and a peer's, side by side); record them with the
# command in docs/benchmarks.md.
bench: $(DEV_STAMP)
	$(BIN)/minikv bench engine
	$(PY) -m minikv_core.raft.bench --entries 500000
	$(BIN)/minikv wal bench

# minikv vs a 3-member etcd 3.4 (Debian's etcd-server; --install fetches it with apt-get).
bench-etcd: $(DEV_STAMP)
	$(PY) bench/cluster_vs_etcd.py --install

# screenshots/*.svg and *.png from the recorded demo scenarios (tools/screenshots.py --record re-records
# them from a real cluster); the README shows them.
screenshots: $(DEV_STAMP)
	$(PY) tools/screenshots.py

# The generated modules are committed; tests/test_proto_generated.py fails if they drift.
proto: $(DEV_STAMP)
	$(PY) tools/gen_proto.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -f minikv_core/storage/_speedups*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
