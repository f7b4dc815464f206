# Wharf: `make run` serves the registry locally, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
# PYTHONWARNINGS: setuptools warns on every editable install of a two-root layout (services/, client/).
PIP := PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test gen lint bench clean

# What `make run` needs: the registry's own dependencies, nothing else.
$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $(RUN_STAMP)

# What `make test` adds: test servers and clients, linters, the code generator, and the example
# extension package (examples/wharf-example), which the tests find the way a user's would be found.
$(STAMP): $(RUN_STAMP) examples/wharf-example/pyproject.toml
	$(PIP) -e '.[dev]'
	$(PIP) -e examples/wharf-example
	touch $(STAMP)

# Regenerate the committed gRPC code (a no-op when protos/ did not change) and the OpenAPI
# document. `make run` does not need it: the generated code is committed, and a test checks it
# against protos/.
gen: $(STAMP)
	$(PY) scripts/genproto.py
	$(PY) scripts/gen_openapi.py

run: $(RUN_STAMP)
	$(VENV)/bin/wharf-stack

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check services tests scripts bench client examples
	$(PY) -m mypy services client --exclude services/gen --ignore-missing-imports

bench: gen
	$(PY) bench/registry_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
