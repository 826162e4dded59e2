#!/usr/bin/env bash
# Create .venv and install seqchurn with its test tools. Idempotent: re-running is cheap.
#
# PyTorch: without an NVIDIA GPU this installs the CPU build (torch==2.13.0, a local wheel
# on our build machines, ~200 MB from PyPI elsewhere). With a GPU (nvidia-smi works) it
# installs the CUDA build instead. Set SEQCHURN_TORCH_SPEC to force a spec, e.g.
#   SEQCHURN_TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel

if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${SEQCHURN_TORCH_SPEC:-}" ]; then
    # shellcheck disable=SC2086
    python -m pip install -q $SEQCHURN_TORCH_SPEC
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch"
    python -m pip install -q torch==2.13.0
  else
    echo "setup: no GPU found, installing the CPU build of torch"
    links=$(python -m pip config get global.find-links 2>/dev/null || true)
    local_cpu_wheel=""
    for dir in $links; do
      ls "${dir#file://}"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 && local_cpu_wheel=yes
    done
    if [ -n "$local_cpu_wheel" ]; then
      python -m pip install -q torch==2.13.0            # the CPU wheel in pip's find-links folder
    else
      python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi
python -m pip install -q -e ".[dev]"
python -c "import torch, seqchurn; print(f'setup: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
