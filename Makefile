# Wharf: `make run` serves the registry locally, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test gen lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Regenerate the committed gRPC code (a no-op when protos/ did not change).
gen: $(STAMP)
	$(PY) scripts/genproto.py

run: gen
	$(VENV)/bin/wharf-stack

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check services tests scripts bench client
	$(PY) -m mypy services client --exclude services/gen --ignore-missing-imports

bench: gen
	$(PY) bench/registry_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
