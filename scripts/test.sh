#!/usr/bin/env bash
# Set up (if needed) and run every test: ruff, unit tests, then every chapter and exercise
# notebook under strict nbval.  This is the command CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff check (lint + import order, configured in pyproject.toml)"
.venv/bin/ruff check hrvit_edu tests tools
export TQDM_DISABLE=1 PYTHONHASHSEED=0
# finished training runs shared between chapters (fresh in every clean clone, so CI recomputes)
export HRVIT_EDU_RUN_CACHE="$PWD/build/run-cache"
notebooks=$(ls chapters/*.ipynb exercises/*.ipynb exercises/solutions/*.ipynb 2>/dev/null || true)
.venv/bin/python -m pytest tests $notebooks \
  --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg \
  --nbval-cell-timeout=900 -p no:cacheprovider -q "$@"
