#!/usr/bin/env bash
# Install headless Chromium and its WebDriver from Debian, and Selenium into .venv,
# for tests/browser/check_pages.py. Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if ! command -v chromium >/dev/null 2>&1 || [ ! -x /usr/bin/chromedriver ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi
chromium --version

if ! "$PY" -c "import selenium" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --disable-pip-version-check "selenium>=4.15"  # the [browser] extra of pyproject.toml
fi
"$PY" -c "import selenium; print('selenium', selenium.__version__)"
