#!/usr/bin/env bash
# Create ./.venv (if needed) and install hrvit-edu with its notebook, test and book (site) extras.
# On a CPU-only Linux machine torch is pinned to the CPU build 2.13.0 (this is the only place a
# version is pinned; pyproject.toml keeps ranges).  Override with HRVIT_EDU_TORCH_SPEC="torch==X".
# Prints one line per step; pip's own output goes to build/logs/setup.log (shown if a step fails).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"hrvit-edu needs Python >= 3.10, found {sys.version.split()[0]}")
PYCHECK

mkdir -p build/logs
LOG=build/logs/setup.log
: > "$LOG"

step() {   # step "what" command...: one line, the command's output to the log
  local what=$1
  shift
  echo "[setup] $what"
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[setup] FAILED: $what; the end of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $("$PY" --version)" "$PY" -m venv .venv
fi
VPY=.venv/bin/python
step "upgrading pip" "$VPY" -m pip install --upgrade pip

if ! "$VPY" -c "import torch" 2>/dev/null; then
  spec=${HRVIT_EDU_TORCH_SPEC:-}
  if [ -z "$spec" ] && [ "$(uname -s)" = "Linux" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    spec="torch==2.13.0"          # the CPU build (CI and CPU-only machines)
  fi
  if [ -n "$spec" ]; then
    step "installing $spec" "$VPY" -m pip install "$spec"
  fi
fi
step "installing hrvit-edu[notebooks,test,book] (editable)" "$VPY" -m pip install -e ".[notebooks,test,book]"
"$VPY" -c "import hrvit_edu, torch; print('[setup] ok: hrvit-edu', hrvit_edu.__version__, '| torch', torch.__version__)"
