# Two commands a new user needs: `make run` (demo on the embedded stack) and
# `make test` (the whole suite). Both create the virtual environment first.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1

.PHONY: venv run up test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[runner,dev]'
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(VENV)/bin/radtrain demo

up: venv
	$(VENV)/bin/radtrain up

test: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider

# The unit tier alone: no servers, under a minute (DESIGN.md §13).
test-fast: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy schemas imaging infra gateway handlers runner radtrain

clean:
	rm -rf $(VENV) .radtrain build *.egg-info
