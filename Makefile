# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedmsr-installed
# Ray must bind loopback only (docs/architecture.md); exported for every recipe.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: setup demo test typecheck bench real-pixel-table clean

# torch 2.13.0 first: it is the local CPU wheel; letting pip resolve torch from
# flwr/opacus' ranges could pull a multi-GB CUDA build instead.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# The demo's fleet comes from the registry (sqlite:///fedmsr.db here): migrate it and
# enroll the 8 synthetic devices; --skip-existing makes a second `make demo` a no-op there.
demo: setup
	$(BIN)/fedmsr db upgrade
	$(BIN)/fedmsr fleet enroll --count 8 --prefix demo- --skip-existing
	$(BIN)/fedmsr run --devices 8 --rounds 5 --seed 0

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# The type checker over the five packages (configured in pyproject.toml); CI runs it.
typecheck: setup
	$(BIN)/python -m mypy

bench: setup
	$(BIN)/python bench/dp_step.py
	$(BIN)/python bench/round_overhead.py
	$(BIN)/python bench/accounting.py
	$(BIN)/python bench/secagg.py
	$(BIN)/python bench/enroll_bulk.py
	$(BIN)/python bench/export_latency.py
	$(BIN)/python bench/ledger_epsilon.py

# The real-pixel benchmark's table (docs/evaluation.md): build it, evaluate it, print it.
real-pixel-table: setup
	$(BIN)/python scripts/real_pixel_table.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
