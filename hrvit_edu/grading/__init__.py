"""Graded exercises: ``check("preface.miou")`` in a notebook, ``python -m hrvit_edu.grading NB``
from a shell.  Why in-repo rather than nbgrader/otter-grader: see ``docs/grading.md``."""
from __future__ import annotations

import inspect
import json
import os
from typing import Callable

from .core import (Check, CheckFailed, Question, QuestionResult, get_question, questions, register,
                   run_question)

RESULTS_ENV = "HRVIT_EDU_GRADING_OUT"


def _record(result: QuestionResult) -> None:
    out = os.environ.get(RESULTS_ENV)
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(result.as_dict()) + "\n")


def grade_function(qid: str, fn: Callable | None) -> QuestionResult:
    """Score one function against one question (no printing)."""
    return run_question(get_question(qid), fn)


def check(qid: str, fn: Callable | None = None) -> None:
    """Score your solution to question ``qid`` and print the score and up to three hints.

    ``fn`` defaults to the function named in the question, looked up in the calling notebook.
    """
    q = get_question(qid)
    if fn is None:
        fn = inspect.currentframe().f_back.f_globals.get(q.function)
    result = run_question(q, fn)
    _record(result)
    print(result.summary())


def check_all(chapter: str, namespace: dict | None = None) -> None:
    """Score every question of a chapter with the functions defined in the calling notebook."""
    ns = namespace if namespace is not None else inspect.currentframe().f_back.f_globals
    results = [run_question(q, ns.get(q.function)) for q in questions(chapter)]
    for r in results:
        _record(r)
    print(format_table(results))


def format_table(results: list[QuestionResult]) -> str:
    width = max(len(r.id) for r in results)
    lines = [f"{'question'.ljust(width)}  score"]
    for r in results:
        lines.append(f"{r.id.ljust(width)}  {r.points}/{r.max_points}")
        lines += [f"{' ' * width}    - {m}" for m in r.messages]
    total, top = sum(r.points for r in results), sum(r.max_points for r in results)
    lines.append(f"{'total'.ljust(width)}  {total}/{top}")
    return "\n".join(lines)


__all__ = ["Check", "CheckFailed", "Question", "QuestionResult", "check", "check_all",
           "format_table", "get_question", "grade_function", "questions", "register", "run_question"]
