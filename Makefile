# The two commands of the README. Each sets up .venv first (idempotent).
.PHONY: setup demo test lint default-model install-device

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/metaemg-demo --console

test: setup
	.venv/bin/python -m pytest

# The device PC: the controller and the console as services (as root; DESTDIR=DIR stages it).
install-device:
	bash scripts/install-device.sh

# What CI checks besides the tests (.ci/run): lint and format, the layers, types.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/mypy
	.venv/bin/python scripts/long_functions.py


# Rebuild the shipped models (under a minute each on 2 CPU cores): the Myo meta-model, and the
# MyHand armband's (the Myo recordings rendered as the MyHand armband reports them); then print
# their comparisons with the baselines (about 2 minutes and 1 minute).
MYO ?= ../shared/datasets/myoarmband
default-model: setup
	.venv/bin/metaemg-import myoarmband $(MYO) data/myo --quiet
	rm -rf data/runs/myo_default
	.venv/bin/metaemg-train --config-name myo_default
	.venv/bin/metaemg-export data/runs/myo_default --out metaemg/default_model/myo_meta.onnx
	.venv/bin/metaemg-import myoarmband $(MYO) data/myhand --as myhand --quiet
	rm -rf data/runs/myhand_default
	.venv/bin/metaemg-train --config-name myhand_default
	.venv/bin/metaemg-export data/runs/myhand_default --out metaemg/default_model/myhand_meta.onnx
	.venv/bin/python -m bench.myo_accuracy --data data/myo --no-previous
	.venv/bin/python -m bench.myhand_accuracy --validate
