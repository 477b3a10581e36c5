#!/usr/bin/env bash
# Create ./.venv (if needed) and install hrvit-edu with its notebook and test extras.
# On a CPU-only Linux machine torch is pinned to the CPU build 2.13.0 (this is the only place a
# version is pinned; pyproject.toml keeps ranges).  Override with HRVIT_EDU_TORCH_SPEC="torch==X".
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"hrvit-edu needs Python >= 3.10, found {sys.version.split()[0]}")
PYCHECK

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true

if ! "$VPY" -c "import torch" 2>/dev/null; then
  spec=${HRVIT_EDU_TORCH_SPEC:-}
  if [ -z "$spec" ] && [ "$(uname -s)" = "Linux" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    spec="torch==2.13.0"          # the CPU build (CI and CPU-only machines)
  fi
  if [ -n "$spec" ]; then
    echo "[setup] installing $spec"
    "$VPY" -m pip install --quiet "$spec" 2>&1 | grep -v "is ignored" || true
  fi
fi
echo "[setup] installing hrvit-edu[notebooks,test]"
"$VPY" -m pip install --quiet -e ".[notebooks,test]" 2>&1 | grep -v "is ignored" || true
"$VPY" -c "import hrvit_edu, torch; print('[setup] ok: hrvit-edu', hrvit_edu.__version__, '| torch', torch.__version__)"
