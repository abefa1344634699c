# Two commands a new user needs: `make run` (demo on the embedded stack) and
# `make test` (the whole suite). Both create the virtual environment first.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
# Bytecode is cached (an environment that sets PYTHONDONTWRITEBYTECODE recompiles every
# module of every test process: 6 s of the unit tier's collection here).
export PYTHONDONTWRITEBYTECODE :=

# The browser tests (tests/browser) drive Debian's chromium through Playwright's
# executable_path; no browser is ever downloaded. Another binary: CHROMIUM=/path.
CHROMIUM ?= $(shell command -v chromium 2>/dev/null || echo /usr/bin/chromium)
export RADTRAIN_TEST_CHROMIUM := $(CHROMIUM)

.PHONY: venv run up test test-fast test-browser browser lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[runner,dev]'
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(VENV)/bin/radtrain demo --keep-up

up: venv
	$(VENV)/bin/radtrain up

test: venv browser
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=30

# The web console in headless Chromium alone (tests/browser, about 3 minutes).
test-browser: venv browser
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/browser

# Installs Debian's chromium when it is missing (as root; otherwise says what to install).
browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium for the browser tests (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "the browser tests need chromium: sudo apt-get install -y chromium" \
	         "(or CHROMIUM=/path/to/chromium make test)" >&2; exit 1; \
	  fi; \
	fi

# Every benchmark (submit, enrich, import, data, train, previews, listing): one JSON
# file and one markdown table of figures and ratios in bench-output/ (bench/__main__.py).
# BENCH_ARGS=--quick for small sizes; --only submit,previews for some.
bench: venv
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

# The unit tier alone: no servers, under a minute (DESIGN.md §13), on one pytest-xdist
# worker per core (tests/conftest.py gathers the workers' error-body leaks).
test-fast: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider -n auto tests/unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy schemas imaging infra gateway handlers runner radtrain

clean:
	rm -rf $(VENV) .radtrain build *.egg-info
