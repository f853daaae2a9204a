# The front door: every target sets up what it needs, so a fresh clone needs nothing by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test lint format bench bench-wasm32 clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "servomesh needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests drive: a headless Chromium for the dashboard test, unshare and ip
# for the broadcast test in a network namespace. Installed when missing (as root, or by sudo).
SYSTEM_TOOLS := chromium chromedriver unshare ip
SYSTEM_PACKAGES := chromium chromium-driver util-linux iproute2
system-deps:
	@missing=$$(for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || echo $$tool; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $(SYSTEM_PACKAGES) (missing: $$missing)"; \
		if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
		else echo "run as root: apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; fi; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install \
			-y -qq --no-install-recommends $(SYSTEM_PACKAGES); \
	fi

demo: $(STAMP)
	$(VENV)/bin/servomesh demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/typecheck.py

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint system-deps
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) tools/bench.py

# The firmware's heap on a 32-bit MicroPython (the webassembly port, from npm; needs Node.js).
bench-wasm32: $(STAMP)
	cd tools/wasm32 && npm ci --no-audit --no-fund --silent
	$(PY) tools/bench_wasm32.py

clean:
	rm -rf $(VENV) .build .pytest_cache .mypy_cache .ruff_cache .hypothesis tools/wasm32/node_modules
