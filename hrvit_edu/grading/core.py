"""The grader's core: questions made of checks, run so that nothing a reader writes can break it.

A *question* (e.g. ``"preface.miou"``) names the function the reader implements and holds a few
*checks*.  Each check gets an :class:`~hrvit_edu.grading.answers.Answer` -- a callable that runs
the reader's function under the question's rules -- and returns ``None`` (pass) or raises
:class:`CheckFailed` with one actionable message.  Checks are worth points (partial credit).

Where the reader's code runs is the answer's business: in the notebook's own process for
``check("q")`` (convenient, not tamper-proof), in a separate process the grader can kill for
``python -m hrvit_edu.grading`` (the score that counts; see ``sandbox.py``).  Either way the
checks, the references and the points live here, in the grader's process, and the score is the
sum of the points of the checks that passed: never more than the question's maximum.

Running a question never raises: exceptions, wrong types, NaNs, warnings, ``sys.exit`` and
time-outs become a score and a message.  ``NotImplementedError`` (an untouched stub) reads
"not attempted yet".  Messages are deterministic: no addresses, timings or paths.

Every question also has checks on *hidden* inputs: sizes and values drawn from a seed made fresh
for each grading run (:func:`hidden_generator`), so no hard-coded output can pass them.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import random
import re
import secrets
import signal
import threading
import warnings
from typing import Callable

import torch

DEFAULT_TIME_LIMIT = 20.0     # seconds per check (the Triton interpreter is slow)
MAX_MESSAGES = 3


class CheckFailed(AssertionError):
    """Raised by a check with the message the reader will see."""


class AnswerUnusable(CheckFailed):
    """The answer cannot be graded at all (no such function, not a function): said once."""


class CheckTimeout(BaseException):
    """The reader's code ran past the check's time limit.

    A ``BaseException`` so that an answer's ``except Exception: continue`` cannot swallow it
    (in-process limits only; the grading sandbox kills the answer's process instead).
    """


class AnswerRaised(Exception):
    """The reader's code raised; carries the exception's type *name* and a cleaned message
    (the exception itself may live in another process)."""

    def __init__(self, type_name: str, message: str):
        super().__init__(message)
        self.type_name, self.message = type_name, message


@dataclasses.dataclass(frozen=True)
class Check:
    name: str                                  # short, shown in messages: "ignore index"
    points: int
    fn: Callable[..., None]                    # fn(answer): raises CheckFailed, or returns None


@dataclasses.dataclass(frozen=True)
class Question:
    """A graded question.

    * ``function``: the name the reader defines in the notebook (what ``answer(...)`` calls).
    * ``kernel``: the name of a ``@triton.jit`` function the checks launch themselves.
    * ``forbidden``: torch functions/ops the answer may not call, e.g. ``"torch.kron"``,
      ``"torch.Tensor.kron"``, ``"torch.ops.hrvit_edu.des"``.
    * ``off_limits``: package functions, classes or modules that stop working while the answer
      runs ("write this yourself"), e.g. ``"hrvit_edu.models.hrvit.stripe_partition"``.
    * ``measure_memory``: count the peak bytes of the tensors a call creates (where the answer
      runs; ``answer.last.peak_bytes``), for checks like "never materialise A kron B".
    * ``no_atomics``: the kernel may not call ``tl.atomic_*`` (read from its source), for
      questions whose point is that every output element has exactly one owner.  The Triton
      interpreter runs programs one after another, so a race could not show up in the values.
    """
    id: str                                    # "<chapter>.<name>"
    title: str
    function: str
    checks: tuple[Check, ...]
    time_limit: float = DEFAULT_TIME_LIMIT
    kernel: str | None = None
    forbidden: tuple[str, ...] = ()
    off_limits: tuple[str, ...] = ()
    measure_memory: bool = False
    no_atomics: bool = False

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


# ------------------------------------------------------------------------------ hidden inputs
_HIDDEN_SEED: contextvars.ContextVar[int] = contextvars.ContextVar("hidden_seed", default=0)


def hidden_generator(salt: int = 0) -> torch.Generator:
    """A generator seeded from this grading run's secret seed (fresh unless the run fixes it)."""
    return torch.Generator().manual_seed((_HIDDEN_SEED.get() * 1_000_003 + salt) % (2 ** 63))


def require_triton() -> None:
    """For kernel questions: a clear failure where Triton cannot run the reader's kernel."""
    from ..kernels import HAS_TRITON, triton_usable
    if not (HAS_TRITON and triton_usable(torch.zeros(1))):
        raise CheckFailed("Triton is not usable here (it is Linux-only); this question needs it")


def hidden_rng(salt: int = 0) -> random.Random:
    """Python-level draws (sizes, steps) from the same secret seed."""
    return random.Random(_HIDDEN_SEED.get() * 1_000_003 + salt)


# ------------------------------------------------------------------------------ time limits
@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`CheckTimeout` in the block after ``seconds`` (POSIX main thread: SIGALRM).

    Best effort, for in-process checks: an answer that blocks or ignores SIGALRM defeats it,
    which is why the command-line grader runs answers in a process it can kill.  Elsewhere
    (Windows, worker threads) the block runs without a limit.
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


def clean_message(text, limit: int = 160) -> str:
    """First line, no addresses or paths, at most ``limit`` characters."""
    text = str(text).strip()
    text = _ADDRESS.sub("", text.splitlines()[0] if text else "")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe_raised(e: AnswerRaised) -> str:
    if e.type_name == "RecursionError":
        return "infinite recursion"
    if e.type_name == "SystemExit":
        return "your code called sys.exit(): an answer must return a value, not end the process"
    return f"your code raised {e.type_name}: {e.message}" if e.message else f"your code raised {e.type_name}"


def run_question(question: Question, answer, *, seed: int | None = None) -> QuestionResult:
    """Run every check of ``question`` against ``answer``; never raises.

    ``answer`` is an :class:`~hrvit_edu.grading.answers.Answer` (or a plain callable, wrapped in
    one for in-process grading).  ``seed`` fixes the hidden inputs (tests); by default each run
    draws a fresh one.
    """
    from .answers import Answer, LocalAnswer

    if not isinstance(answer, Answer):
        answer = LocalAnswer.from_callable(question, answer)
    token = _HIDDEN_SEED.set(secrets.randbits(62) if seed is None else int(seed))
    points, messages, not_attempted = 0, [], False
    try:
        for check in question.checks:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    with answer.time_limit(question.time_limit), torch.random.fork_rng(devices=[]):
                        torch.manual_seed(0)
                        check.fn(answer)
                    points += check.points
                except NotImplementedError:
                    not_attempted = True
                except AnswerUnusable as e:
                    messages.append(clean_message(e, 200))
                except CheckFailed as e:
                    messages.append(f"{check.name}: {clean_message(e, 200)}")
                except CheckTimeout:
                    messages.append(f"{check.name}: timed out after {question.time_limit:g} s "
                                    "(an infinite loop, or far too slow?)")
                except AnswerRaised as e:
                    messages.append(f"{check.name}: {_describe_raised(e)}")
                except RecursionError:
                    messages.append(f"{check.name}: infinite recursion")
                except Exception as e:   # noqa: BLE001 - a check tripping over an odd result
                    messages.append(f"{check.name}: your code raised {type(e).__name__}: {clean_message(e)}")
                except BaseException as e:   # noqa: BLE001 - KeyboardInterrupt/SystemExit in-process
                    messages.append(f"{check.name}: your code raised {type(e).__name__}")
            if caught:
                w = caught[0]
                messages.append(f"{check.name}: your code warned {w.category.__name__}: "
                                f"{clean_message(w.message)}")
    finally:
        _HIDDEN_SEED.reset(token)
    if not_attempted and points == 0:
        messages = [f"not attempted yet (0/{question.max_points}): replace the "
                    f"`raise NotImplementedError` in `{question.function}`"
                    + (f" and in `{question.kernel}`" if question.kernel else "")]
    points = min(points, question.max_points)
    seen, unique = set(), []
    for m in messages:                     # keep at most three messages, first come first
        if m not in seen:
            seen.add(m)
            unique.append(m)
    return QuestionResult(question.id, points, question.max_points, unique[:MAX_MESSAGES])
