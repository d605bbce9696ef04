# The two commands of the README. Each sets up .venv first (idempotent).
.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/metaemg-demo

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python -m bench.codec
