"""Graded exercises: ``check("preface.miou")`` in a notebook, ``python -m hrvit_edu.grading NB``
from a shell.  Why in-repo rather than nbgrader/otter-grader, and what a local grader can and
cannot prevent: see ``docs/grading.md``.

``check``/``check_all`` grade in the notebook's own process, for quick feedback while working.
The score that counts comes from the command line, which runs the answers in a sandboxed child
process and computes every point in its own (``sandbox.py``).
"""
from __future__ import annotations

import inspect
import os
from typing import Callable

from .answers import Answer, LocalAnswer
from .core import (
    Check,
    CheckFailed,
    Question,
    QuestionResult,
    get_question,
    hidden_generator,
    hidden_rng,
    questions,
    register,
    run_question,
)
from .sandbox import CHILD_ENV


def _in_sandbox() -> bool:
    return os.environ.get(CHILD_ENV) == "1"


def grade_function(qid: str, fn: Callable | None, *, kernel=None, seed: int | None = None) -> QuestionResult:
    """Score one function (and, for kernel questions, its ``@triton.jit`` kernel) in-process."""
    q = get_question(qid)
    return run_question(q, LocalAnswer.from_callable(q, fn, kernel), seed=seed)


def check(qid: str, fn: Callable | None = None) -> None:
    """Score your solution to question ``qid`` and print the score and up to three hints.

    The function (and the kernel, for Triton questions) is looked up by name in the calling
    notebook; pass ``fn`` to grade another function under the question's name.
    """
    if _in_sandbox():
        return
    q = get_question(qid)
    namespace = dict(inspect.currentframe().f_back.f_globals)
    if fn is not None:
        namespace[q.function] = fn
    print(run_question(q, LocalAnswer(q, namespace)).summary())


def check_all(chapter: str, namespace: dict | None = None) -> None:
    """Score every question of a chapter with the functions defined in the calling notebook."""
    if _in_sandbox():
        return
    ns = namespace if namespace is not None else inspect.currentframe().f_back.f_globals
    print(format_table([run_question(q, LocalAnswer(q, ns)) for q in questions(chapter)]))


def format_table(results: list[QuestionResult]) -> str:
    width = max(len(r.id) for r in results)
    lines = [f"{'question'.ljust(width)}  score"]
    for r in results:
        lines.append(f"{r.id.ljust(width)}  {r.points}/{r.max_points}")
        lines += [f"{' ' * width}    - {m}" for m in r.messages]
    total, top = sum(r.points for r in results), sum(r.max_points for r in results)
    lines.append(f"{'total'.ljust(width)}  {total}/{top}")
    return "\n".join(lines)


__all__ = ["Answer", "Check", "CheckFailed", "LocalAnswer", "Question", "QuestionResult", "check",
           "check_all", "format_table", "get_question", "grade_function", "hidden_generator", "hidden_rng",
           "questions", "register", "run_question"]
