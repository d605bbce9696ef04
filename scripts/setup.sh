#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv (idempotent, quick when current).
# torch is pinned: on a CPU machine an unpinned torch pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${METAEMG_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
# System tools for the GUI tests (a virtual X server, input driver, screenshots) and the console's
# browser tests (Debian's Chromium and its ChromeDriver, driven headless by Selenium).
if ! command -v Xvfb >/dev/null || ! command -v xdotool >/dev/null || ! command -v import >/dev/null \
    || ! [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        echo "installing xvfb, xdotool, imagemagick, chromium and chromium-driver for the GUI and browser tests ..." >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xdotool imagemagick chromium chromium-driver >/dev/null
    else
        echo "note: install xvfb, xdotool, imagemagick, chromium and chromium-driver to run the GUI and browser tests" >&2
    fi
fi
stamp=.venv/.metaemg-setup
want="$(sha256sum pyproject.toml | cut -c1-16) torch=$TORCH_VERSION"
if [[ -x .venv/bin/python && -f $stamp && "$(cat $stamp)" == "$want" ]]; then
    exit 0
fi
echo "setting up .venv (torch==$TORCH_VERSION, project in editable mode) ..." >&2
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION"
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "$want" > $stamp
echo "set-up done" >&2
