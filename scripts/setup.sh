#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv (idempotent, quick when current).
# torch is pinned: on a CPU machine an unpinned torch pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${METAEMG_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
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
