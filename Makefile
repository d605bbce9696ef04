# The two commands of the README. Each sets up .venv first (idempotent).
.PHONY: setup demo test default-model

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/metaemg-demo

test: setup
	.venv/bin/python -m pytest


# Rebuild the shipped default Myo meta-model (about 10-20 minutes on 2 CPU cores).
MYO ?= ../shared/datasets/myoarmband
default-model: setup
	.venv/bin/metaemg-import myoarmband $(MYO) data/myo --quiet
	rm -rf data/runs/myo_default
	.venv/bin/metaemg-train --config-name myo_default
	.venv/bin/metaemg-export data/runs/myo_default --out metalearn/default_model/myo_meta.onnx
	.venv/bin/python -m bench.myo_accuracy --data data/myo --checkpoint data/runs/myo_default/models/best.pt
