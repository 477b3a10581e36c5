"""Regenerate the stored outputs of every notebook, in the environment CI validates them in.

    python tools/regen_notebooks.py                 # chapters/, exercises/, exercises/solutions/
    python tools/regen_notebooks.py chapters/00_preface.ipynb

Runs each notebook in a fresh kernel of this Python with the book's execution environment
(TQDM_DISABLE, PYTHONHASHSEED, default profile) and writes it back in place.  Run it on the
CI machine type (2 CPU cores, no GPU): stored outputs must be what CI reproduces.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat

from hrvit_edu.runner import execute_notebook

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["chapters/*.ipynb", "exercises/*.ipynb", "exercises/solutions/*.ipynb"]


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(p for g in DEFAULT for p in ROOT.glob(g))
    failed = 0
    # a run cache private to this invocation: chapters share runs, nothing stale survives
    cache = tempfile.mkdtemp(prefix="hrvit-edu-runs-")
    for path in paths:
        print(f"regenerating {path} ...", flush=True)
        run = execute_notebook(path.resolve(), HRVIT_EDU_PROFILE="book", HRVIT_EDU_RUN_CACHE=cache)
        if run.failure is not None:
            print(f"  FAILED: {run.failure.describe()}")
            failed += 1
            continue
        nb = run.nb
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
