# The two set-up commands of README.md: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.14.1 / torchvision 0.29.1 are the releases this project is tested with; pip takes them from a
# local wheel cache where one exists.
TORCH := torch==2.14.1 torchvision==0.29.1
# Every other package at the version the suite passes with, as the image installs them. Without the
# pins pip's resolver can lose itself: aiobotocore (for s3fs) caps botocore, boto3's newer releases
# need a newer botocore, and on 2026-11-28 it backtracked through both and then through Ray, down to
# ray 2.44.1, whose download failed.
CONSTRAINTS := docker/constraints.txt

.PHONY: demo test lint clean

$(BIN)/ltray: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(BIN)/ltray

demo: $(BIN)/ltray
	$(BIN)/ltray demo

test: $(BIN)/ltray
	$(BIN)/python -m pytest

lint: $(BIN)/ltray
	$(BIN)/ruff check ltray tests bench
	$(BIN)/ruff format --check ltray tests bench

clean:
	rm -rf ltray-demo .pytest_cache
