#!/usr/bin/env bash
# Wheels a bare GPU box lacks for bench/gpu_check.sh (it has torch, torchvision, pyarrow, fsspec,
# typer, rich and pyyaml, and no registry): pydantic and pytest with their dependencies, for
# CPython 3.12 on x86-64 Linux, into .whl/ (git-ignored), at the versions this machine uses;
# and TorchCodec alone (bench/bench_decode.py compares its nvjpeg decoder with torchvision's).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
rm -rf .whl  # afresh: two versions of a package would make the check's pip refuse them all
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
"$PY" -m pip download -q --dest .whl --python-version 3.12 --platform manylinux2014_x86_64 \
    --only-binary=:all: "pydantic==$(version pydantic)" "pytest==$(version pytest)"
"$PY" -m pip download -q --dest .whl --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --only-binary=:all: --no-deps torchcodec
ls .whl
