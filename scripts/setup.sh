#!/usr/bin/env bash
# Create .venv and install makevl with pinned dependencies.
#   bash scripts/setup.sh         # the package and its runtime dependencies
#   bash scripts/setup.sh --dev   # plus test tools, the Milvus backend's packages (pymilvus,
#                                 # milvus-lite) and Debian's Chromium for the browser test
# torch/torchvision go first, pinned, so pip takes the wheels on this machine's
# disk instead of resolving an unpinned (multi-GB download) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
quiet() { grep -v "is ignored: it is neither" || true; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" 2>&1 | quiet
if [ "$DEV" = 1 ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev,milvus]" 2>&1 | quiet
  if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing Debian chromium for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: chromium not installed; the browser test will be skipped"
  fi
else
  .venv/bin/pip install -q --disable-pip-version-check -e . 2>&1 | quiet
fi
.venv/bin/python -c "import torch, timm, transformers, faiss, makevl; print('makevl ready: torch', torch.__version__)"
