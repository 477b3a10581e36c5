#!/usr/bin/env bash
# Set up (if needed) and run the book: execute every chapter headless (default profile), write
# executed notebooks + HTML under build/, print a results summary.  Extra args go to the runner,
# e.g. `scripts/book.sh --only 00 --profile ci`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m hrvit_edu.book "$@"
