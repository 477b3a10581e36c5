"""The grading sandbox: the reader's code runs in a child process; the score never leaves ours.

``python -m hrvit_edu.grading NB`` does not trust anything the notebook prints or writes.  It
starts a fresh child process (``multiprocessing`` *spawn*: a new interpreter, nothing inherited)
that executes the notebook's code cells in an IPython shell -- ``check(...)`` calls are no-ops
there -- and then waits for requests.  The grader's process runs each question's checks: every
time a check calls the answer, the request (inputs) goes to the child, the child runs the
reader's function under the question's rules (:func:`hrvit_edu.grading.answers.execute`) and
sends back bytes that we read with ``torch.load(weights_only=True)``: plain tensors, numbers,
strings and containers, never code.  References, comparisons, hidden seeds and points stay here.

Limits hold whatever the answer does: a call that runs past the check's time limit (an infinite
loop, ``except BaseException: continue``, an ignored SIGALRM) gets its process killed; the
question loses the remaining checks and the next question starts a new child.  A cell that does
not finish while the notebook loads is skipped (and reported), and loading starts again.

What this cannot prevent is said in ``docs/grading.md``: the child runs the reader's code with
the reader's rights, so never grade someone else's notebook outside a container.
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import signal
import time
from pathlib import Path

import torch

from .answers import Answer, Reply, execute
from .core import AnswerRaised, CheckTimeout, Question, QuestionResult, get_question, run_question

CHILD_ENV = "HRVIT_EDU_GRADING_CHILD"       # set in the child: check()/check_all() do nothing
CELL_LIMIT = 300.0                          # seconds a notebook cell may take while loading
MAX_REPLY_BYTES = 256 * 2 ** 20


def _send(conn, obj) -> None:
    buf = io.BytesIO()
    try:
        torch.save(obj, buf)
    except Exception as e:  # noqa: BLE001 - a value to_wire let through but torch cannot save
        buf = io.BytesIO()
        torch.save(Reply(error={"kind": "raised", "type": type(e).__name__,
                                "message": "the answer's result could not be sent"}).as_wire(), buf)
    conn.send_bytes(buf.getvalue())


def _child_main(conn, notebook: str, skip: list[int]) -> None:
    """Entry point of the child: load the notebook, then serve requests until the pipe closes."""
    os.setsid()                    # its own process group: closing the sandbox kills what it started
    os.environ.update({CHILD_ENV: "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg",
                       "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    devnull = os.open(os.devnull, os.O_WRONLY)           # the notebook's prints go nowhere
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.chdir(Path(notebook).parent)

    import nbformat
    from IPython.core.interactiveshell import InteractiveShell

    from .. import kernels
    from .answers import seal
    from .core import questions

    kernels.enable_interpreter()          # the reader's @triton.jit kernels run on the CPU too
    seal(questions())                     # before any cell: nothing of the originals to save and restore
    shell = InteractiveShell.instance()
    nb = nbformat.read(notebook, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or index in skip:
            continue
        _send(conn, {"event": "cell", "index": index})
        shell.run_cell(cell.source, store_history=False)
    _send(conn, {"event": "ready"})
    namespace = shell.user_ns
    while True:
        try:
            op, qid, payload = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        _send(conn, execute(get_question(qid), namespace, op, payload).as_wire())


def _by_value(obj):
    """Tensors as detached copies, pickled by value (never shared memory the child could write)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if type(obj) in (list, tuple):
        return type(obj)(_by_value(v) for v in obj)
    if type(obj) is dict:
        return {k: _by_value(v) for k, v in obj.items()}
    return obj


class SandboxLost(Exception):
    pass


class Sandbox:
    """One child process holding one notebook's answers; restarted when it is lost."""

    def __init__(self, notebook: Path, cell_limit: float = CELL_LIMIT):
        self.notebook = Path(notebook).resolve()
        self.cell_limit = cell_limit
        self.skip: set[int] = set()
        self.notes: list[str] = []
        self.proc = None
        self.conn = None

    # -- life cycle
    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> None:
        """Start a child and wait until the notebook is loaded, skipping cells that hang."""
        ctx = multiprocessing.get_context("spawn")
        for _ in range(1000):
            self.close()
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(target=_child_main, args=(child, str(self.notebook), sorted(self.skip)),
                                    daemon=True)
            self.proc.start()
            child.close()
            current = None
            while True:
                try:
                    msg = self._receive(time.monotonic() + self.cell_limit)
                except CheckTimeout:
                    why = f"did not finish within {self.cell_limit:g} s"
                    break
                except SandboxLost:
                    why = "ended the process (sys.exit in a thread, os._exit, or a crash)"
                    break
                if not isinstance(msg, dict):
                    continue
                if msg.get("event") == "ready":
                    return
                if msg.get("event") == "cell" and isinstance(msg.get("index"), int):
                    current = msg["index"]
            if current is None:
                self.close()
                raise RuntimeError(f"the grading process for {self.notebook.name} did not start")
            self.skip.add(current)
            self.notes.append(f"cell {current} {why}: it was skipped while loading the answers")
        raise RuntimeError("could not load the notebook")      # pragma: no cover

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            try:                                  # the child and anything it started (its group)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
            self.proc = None

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- messages
    def _receive(self, deadline: float):
        remaining = max(0.0, deadline - time.monotonic())
        try:
            ready = self.conn.poll(remaining)
        except (EOFError, OSError):
            raise SandboxLost() from None
        if not ready:
            self.close()
            raise CheckTimeout()
        try:
            data = self.conn.recv_bytes(MAX_REPLY_BYTES)
        except (EOFError, OSError):
            self.close()
            raise SandboxLost() from None
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception:  # noqa: BLE001 - not plain data: refuse it
            return None

    def request(self, op: str, qid: str, payload: tuple, deadline: float) -> Reply:
        if not self.alive():
            raise SandboxLost()
        try:
            self.conn.send_bytes(pickle.dumps((op, qid, _by_value(payload))))
        except (EOFError, OSError, BrokenPipeError):
            self.close()
            raise SandboxLost() from None
        return Reply.from_wire(self._receive(deadline))


class RemoteAnswer(Answer):
    """The answer to one question, living in the sandbox's child process."""

    def __init__(self, question: Question, sandbox: Sandbox):
        self.question, self.sandbox = question, sandbox
        self.deadline = None
        self.lost: BaseException | None = None

    @contextlib.contextmanager
    def time_limit(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self.deadline = None

    def _do(self, op: str, payload: tuple) -> Reply:
        if self.lost is not None:                 # the rest of this question is lost with it
            raise self.lost
        deadline = self.deadline if self.deadline is not None else time.monotonic() + self.question.time_limit
        try:
            return self.sandbox.request(op, self.question.id, payload, deadline)
        except CheckTimeout:
            self.lost = CheckTimeout()
            raise
        except SandboxLost:
            self.lost = AnswerRaised("ProcessEnded", "it ended the grading process (os._exit, a crash "
                                     "or running out of memory)")
            raise self.lost from None


def grade_questions(notebook: Path, qs: list[Question], *, seed: int | None = None,
                    cell_limit: float = CELL_LIMIT) -> tuple[list[QuestionResult], list[str]]:
    """Grade ``qs`` against the answers in ``notebook``; returns the results and loading notes."""
    from .. import kernels

    try:
        kernels.enable_interpreter()      # the checks launch kernels here too (CPU: interpreter)
    except RuntimeError:
        pass                              # kernel modules already built natively: checks say so
    results = []
    with Sandbox(notebook, cell_limit) as box:
        for q in qs:
            if not box.alive():
                box.start()
            results.append(run_question(q, RemoteAnswer(q, box), seed=seed))
        notes = list(box.notes)
    return results, notes


__all__ = ["CHILD_ENV", "RemoteAnswer", "Sandbox", "grade_questions", "get_question"]
