"""Grade an exercise notebook: execute it in a fresh kernel and print a score per question.

    python -m hrvit_edu.grading exercises/00_preface.ipynb
    python -m hrvit_edu.grading exercises/00_preface.ipynb --json

Exit status 0 whenever grading itself worked, whatever the score; 2 if it could not grade.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from . import RESULTS_ENV, format_table
from .core import QuestionResult, questions


def chapter_of(nb, path: Path) -> str:
    meta = nb.metadata.get("hrvit_edu", {})
    if "chapter" in meta:
        return meta["chapter"]
    stem = path.stem.split("_", 1)
    return stem[1] if len(stem) == 2 and stem[0].isdigit() else path.stem


def grade_notebook(path: Path, timeout: int = 600) -> tuple[str, list[QuestionResult]]:
    """Execute ``path`` (errors allowed) and collect the last result of every question."""
    import nbformat
    from nbclient import NotebookClient

    from ..book import EXECUTION_ENV, _environ

    nb = nbformat.read(path, as_version=4)
    chapter = chapter_of(nb, path)
    qs = questions(chapter)
    if not qs:
        raise ValueError(f"no graded questions for chapter {chapter!r} ({path.name})")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.jsonl"
        out.touch()
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                record_timing=False, resources={"metadata": {"path": str(path.parent)}})
        problem = None
        with _environ(**EXECUTION_ENV, **{RESULTS_ENV: str(out)}):
            try:
                client.execute()
            except Exception as e:  # noqa: BLE001 - a cell time-out or a dead kernel
                problem = f"the notebook stopped early ({type(e).__name__})"
        recorded = {}
        for line in out.read_text().splitlines():
            d = json.loads(line)
            recorded[d["id"]] = QuestionResult(**d)
    results = []
    for q in qs:
        if q.id in recorded:
            results.append(recorded[q.id])
        else:
            why = problem or "its check cell did not run (was it deleted, or did an earlier cell fail?)"
            results.append(QuestionResult(q.id, 0, q.max_points, [f"not graded: {why}"]))
    return chapter, results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)
    if not args.notebook.exists():
        print(f"no such notebook: {args.notebook}", file=sys.stderr)
        return 2
    try:
        chapter, results = grade_notebook(args.notebook.resolve(), args.timeout)
    except Exception as e:  # noqa: BLE001
        print(f"could not grade {args.notebook}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    score, top = sum(r.points for r in results), sum(r.max_points for r in results)
    if args.json:
        print(json.dumps({"notebook": args.notebook.name, "chapter": chapter, "score": score,
                          "max_score": top, "questions": [r.as_dict() for r in results]}))
    else:
        print(f"{args.notebook.name} ({chapter})")
        print(format_table(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
