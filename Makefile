# The two commands of the README. Each sets up .venv first (idempotent).
.PHONY: setup demo test default-model

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/metaemg-demo

test: setup
	.venv/bin/python -m pytest


# Rebuild the shipped default Myo meta-model (under a minute on 2 CPU cores), then print the
# comparison with its baselines (about 2 minutes; the full bench adds the previous recipe).
MYO ?= ../shared/datasets/myoarmband
default-model: setup
	.venv/bin/metaemg-import myoarmband $(MYO) data/myo --quiet
	rm -rf data/runs/myo_default
	.venv/bin/metaemg-train --config-name myo_default
	.venv/bin/metaemg-export data/runs/myo_default --out metalearn/default_model/myo_meta.onnx
	.venv/bin/python -m bench.myo_accuracy --data data/myo --no-previous
