# The two commands of the README. Each sets up .venv first (idempotent).
.PHONY: setup demo test lint default-model

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/metaemg-demo --console

test: setup
	.venv/bin/python -m pytest

# What CI checks besides the tests (.ci/run): lint and format, the layers, types.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/mypy


# Rebuild the shipped default Myo meta-model (under a minute on 2 CPU cores), then print the
# comparison with its baselines (about 2 minutes; the full bench adds the previous recipe).
MYO ?= ../shared/datasets/myoarmband
default-model: setup
	.venv/bin/metaemg-import myoarmband $(MYO) data/myo --quiet
	rm -rf data/runs/myo_default
	.venv/bin/metaemg-train --config-name myo_default
	.venv/bin/metaemg-export data/runs/myo_default --out metaemg/default_model/myo_meta.onnx
	.venv/bin/python -m bench.myo_accuracy --data data/myo --no-previous
