# Everything runs from a project-local virtual environment that these targets create.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo test lint install bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# The reference application (src/aegis_demo) on embedded SQLite: http://127.0.0.1:8000,
# printed with the operator panel's token; Ctrl-C stops it. DATABASE_URL picks another
# database; python -m aegis_demo --help lists the options.
demo: $(STAMP)
	$(BIN)/python -m aegis_demo

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/mypy src tests/typing

# Two worker processes: each creates its own databases (tests/conftest.py), and the suite
# spends much of its time waiting on the servers, so two workers take well under the time
# of one even on two CPUs. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# Benchmarks against the peers (docs/benchmarks.md): the bench extra holds the peers and
# tools, never runtime dependencies, and the litestar extra is the framework of the litestar
# scenario. Needs PostgreSQL (BENCH_PG_URL); wrk if installed (the session scenarios need it).
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench,litestar]"
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache aegis.db aegis.db-wal aegis.db-shm
