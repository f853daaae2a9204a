# The front door: every target sets up what it needs, so a fresh clone needs nothing by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench bench-wasm32 clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "servomesh needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/servomesh demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/typecheck.py

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) tools/bench.py

# The firmware's heap on a 32-bit MicroPython (the webassembly port, from npm; needs Node.js).
bench-wasm32: $(STAMP)
	cd tools/wasm32 && npm ci --no-audit --no-fund --silent
	$(PY) tools/bench_wasm32.py

clean:
	rm -rf $(VENV) .build .pytest_cache .mypy_cache .ruff_cache .hypothesis tools/wasm32/node_modules
