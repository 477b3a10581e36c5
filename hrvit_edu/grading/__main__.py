"""Grade an exercise notebook: its answers run in a sandboxed child process, every point is
computed here.

    python -m hrvit_edu.grading exercises/00_preface.ipynb
    python -m hrvit_edu.grading exercises/00_preface.ipynb --json

Exit status 0 whenever grading itself worked, whatever the score; 2 if it could not grade.
Grading executes the notebook's code with your rights: never grade someone else's notebook
outside a container (docs/grading.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import format_table
from .core import QuestionResult, questions
from .sandbox import CELL_LIMIT, grade_questions


def chapter_of(nb, path: Path) -> str:
    meta = nb.metadata.get("hrvit_edu", {})
    if "chapter" in meta:
        return meta["chapter"]
    stem = path.stem.split("_", 1)
    return stem[1] if len(stem) == 2 and stem[0].isdigit() else path.stem


def grade_notebook(path: Path, *, only: list[str] | None = None, seed: int | None = None,
                   cell_limit: float = CELL_LIMIT) -> tuple[str, list[QuestionResult], list[str]]:
    """Grade every question of the notebook's chapter (or the ids in ``only``).

    Returns the chapter, one result per question, and notes about loading (skipped cells).
    """
    import nbformat

    from .. import kernels

    try:     # before the checks import any kernel module: the grader launches kernels on the CPU
        kernels.enable_interpreter()
    except RuntimeError:
        pass     # kernel modules already built natively in this process: kernel checks will say so
    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    chapter = chapter_of(nb, path)
    qs = questions(chapter)
    if not qs:
        raise ValueError(f"no graded questions for chapter {chapter!r} ({path.name})")
    if only:
        unknown = sorted(set(only) - {q.id for q in qs})
        if unknown:
            raise ValueError(f"unknown question(s) for chapter {chapter!r}: {', '.join(unknown)}")
        qs = [q for q in qs if q.id in only]
    results, notes = grade_questions(path, qs, seed=seed, cell_limit=cell_limit)
    return chapter, results, notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--only", action="append", metavar="QID", help="grade only this question (repeatable)")
    ap.add_argument("--cell-timeout", type=float, default=CELL_LIMIT,
                    help="seconds a notebook cell may take while the answers load")
    args = ap.parse_args(argv)
    if not args.notebook.exists():
        print(f"no such notebook: {args.notebook}", file=sys.stderr)
        return 2
    try:
        chapter, results, notes = grade_notebook(args.notebook, only=args.only, cell_limit=args.cell_timeout)
    except Exception as e:  # noqa: BLE001
        print(f"could not grade {args.notebook}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    score, top = sum(r.points for r in results), sum(r.max_points for r in results)
    if args.json:
        print(json.dumps({"notebook": args.notebook.name, "chapter": chapter, "score": score,
                          "max_score": top, "questions": [r.as_dict() for r in results], "notes": notes}))
    else:
        print(f"{args.notebook.name} ({chapter})")
        print(format_table(results))
        for note in notes:
            print(f"note: {note}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
