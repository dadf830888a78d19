#!/usr/bin/env bash
# Create .venv and install makevl with pinned dependencies.
# torch/torchvision go first, pinned, so pip takes the wheels on this machine's
# disk instead of resolving an unpinned (multi-GB download) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import torch, timm, transformers, faiss, makevl; print('makevl ready: torch', torch.__version__)"
