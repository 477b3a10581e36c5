"""The book's main job: execute every chapter headless, render it, summarise the results.

    python -m hrvit_edu.book                    # all chapters, default profile, into build/
    python -m hrvit_edu.book --only 00 --profile ci

Writes ``build/<chapter>.ipynb`` (executed) and ``build/<chapter>.html`` and prints one line
per chapter: status, runtime and the final metrics the chapter handed to
:func:`hrvit_edu.notebook.report`.  Exit status 1 if any chapter failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from .notebook import REPORT_DIR_ENV, RUN_CACHE_ENV

# The environment every headless run uses, for the book and for regenerating stored outputs.
EXECUTION_ENV = {"TQDM_DISABLE": "1", "PYTHONHASHSEED": "0", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


@contextlib.contextmanager
def _environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute_notebook(path: Path, timeout: int = 1800, **env):
    """Execute a notebook in a fresh kernel of this Python; return (notebook, error or None)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    with _environ(**EXECUTION_ENV, **env):
        try:
            client.execute()
            return nb, None
        except CellExecutionError as e:
            return nb, f"{e.ename}: {e.evalue}"[:200]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chapters", default="chapters", help="folder of chapter notebooks")
    ap.add_argument("--out", default="build", help="output folder")
    ap.add_argument("--only", default="", help="run only chapters whose file name starts with this")
    ap.add_argument("--profile", default=None, help="ci | book | full (default: $HRVIT_EDU_PROFILE or book)")
    ap.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)

    from .profiles import get_profile
    profile = get_profile(args.profile).name
    out = Path(args.out)
    reports = out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in Path(args.chapters).glob("*.ipynb") if p.name.startswith(args.only))
    if not paths:
        print(f"no chapters found in {args.chapters!r}", file=sys.stderr)
        return 1
    from nbconvert import HTMLExporter
    import nbformat

    rows, failed = [], 0
    for path in paths:
        print(f"running {path.name} (profile {profile}) ...", flush=True)
        (reports / f"{path.stem}.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        nb, err = execute_notebook(path.resolve(), args.timeout, HRVIT_EDU_PROFILE=profile,
                                   **{REPORT_DIR_ENV: str(reports.resolve()),
                                      RUN_CACHE_ENV: str((out / "run-cache" / profile).resolve())})
        dt = time.perf_counter() - t0
        nbformat.write(nb, out / path.name)
        html, _ = HTMLExporter().from_notebook_node(nb)
        (out / f"{path.stem}.html").write_text(html, encoding="utf-8")
        rep = reports / f"{path.stem}.json"
        metrics = json.loads(rep.read_text()) if rep.exists() else {}
        failed += err is not None
        rows.append((path.stem, "ok" if err is None else f"FAILED ({err})", dt, metrics))
    print("\nchapter                  status   runtime  metrics")
    for name, status, dt, metrics in rows:
        m = ", ".join(f"{k}={v}" for k, v in metrics.items())
        print(f"{name:24s} {status:8s} {dt:6.0f} s  {m}")
    print(f"\nexecuted notebooks and HTML in {out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
