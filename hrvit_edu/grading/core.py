"""The grader's core: questions made of checks, run so that nothing a reader writes can break it.

A *question* (e.g. ``"preface.miou"``) names the function the reader implements and holds a few
*checks*.  Each check gets the reader's function, returns ``None`` (pass) or raises
:class:`CheckFailed` with one actionable message, and is worth some points (partial credit).

Running a check never raises: exceptions, wrong types, NaNs, warnings and time-outs become a
score and a message.  ``NotImplementedError`` (an untouched stub) reads "not attempted yet".
Messages are deterministic: no addresses, timings or paths.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import signal
import threading
import warnings
from typing import Callable

import torch

DEFAULT_TIME_LIMIT = 20.0     # seconds per check (the Triton interpreter is slow)
MAX_MESSAGES = 3


class CheckFailed(AssertionError):
    """Raised by a check with the message the reader will see."""


class CheckTimeout(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Check:
    name: str                                  # short, shown in messages: "ignore index"
    points: int
    fn: Callable[[Callable], None]             # raises CheckFailed, or returns None on success


@dataclasses.dataclass(frozen=True)
class Question:
    id: str                                    # "<chapter>.<name>"
    title: str
    function: str                              # the name the reader defines in the notebook
    checks: tuple[Check, ...]
    time_limit: float = DEFAULT_TIME_LIMIT

    @property
    def chapter(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def max_points(self) -> int:
        return sum(c.points for c in self.checks)


@dataclasses.dataclass
class QuestionResult:
    id: str
    points: int
    max_points: int
    messages: list[str]

    def summary(self) -> str:
        mark = "  (full marks)" if self.points == self.max_points else ""
        lines = [f"{self.id}: {self.points}/{self.max_points}{mark}"]
        lines += [f"  - {m}" for m in self.messages]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_QUESTIONS: dict[str, Question] = {}


def register(question: Question) -> Question:
    if question.id in _QUESTIONS:
        raise ValueError(f"question {question.id!r} is already registered")
    _QUESTIONS[question.id] = question
    return question


def questions(chapter: str | None = None) -> list[Question]:
    from . import checks  # noqa: F401  (registers every chapter's questions)

    return [q for q in _QUESTIONS.values() if chapter is None or q.chapter == chapter]


def get_question(qid: str) -> Question:
    known = {q.id: q for q in questions()}
    if qid not in known:
        raise KeyError(f"unknown question {qid!r}; known: {', '.join(known)}")
    return known[qid]


# ------------------------------------------------------------------------------ time limits
@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`CheckTimeout` in the block after ``seconds`` (POSIX main thread: SIGALRM).

    Elsewhere (Windows, worker threads) the block runs without a limit.
    """
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def _raise(signum, frame):
        raise CheckTimeout()

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|/[^\s'\"]+/")


def _clean(text: str, limit: int = 160) -> str:
    text = _ADDRESS.sub("", str(text).strip().splitlines()[0] if str(text).strip() else "")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run_question(question: Question, fn: Callable | None) -> QuestionResult:
    """Run every check of ``question`` on ``fn``; never raises."""
    if fn is None:
        return QuestionResult(question.id, 0, question.max_points,
                              [f"define a function named `{question.function}` first"])
    if not callable(fn):
        return QuestionResult(question.id, 0, question.max_points,
                              [f"`{question.function}` should be a function, got {type(fn).__name__}"])
    points, messages, not_attempted = 0, [], False
    for check in question.checks:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with time_limit(question.time_limit), torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    check.fn(fn)
                points += check.points
            except NotImplementedError:
                not_attempted = True
            except CheckFailed as e:
                messages.append(f"{check.name}: {_clean(e, 200)}")
            except CheckTimeout:
                messages.append(f"{check.name}: timed out after {question.time_limit:g} s "
                                "(an infinite loop, or far too slow?)")
            except RecursionError:
                messages.append(f"{check.name}: infinite recursion")
            except Exception as e:   # noqa: BLE001 - the reader's code may raise anything
                messages.append(f"{check.name}: your code raised {type(e).__name__}: {_clean(e)}")
        if caught:
            w = caught[0]
            messages.append(f"{check.name}: your code warned {w.category.__name__}: {_clean(w.message)}")
    if not_attempted and points == 0:
        messages = [f"not attempted yet (0/{question.max_points}): replace the "
                    f"`raise NotImplementedError` in `{question.function}`"]
    # keep at most three messages, first come first
    seen, unique = set(), []
    for m in messages:
        if m not in seen:
            seen.add(m)
            unique.append(m)
    return QuestionResult(question.id, points, question.max_points, unique[:MAX_MESSAGES])
