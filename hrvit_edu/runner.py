"""Executing a notebook headless: one runner for the book, output regeneration and tests.

``execute_notebook(path)`` runs every cell in a fresh kernel of this Python, with the book's
execution environment, and returns a :class:`Run`: the executed notebook (partial if a cell
failed), per-cell seconds, and -- on failure -- where and why (:class:`Failure`).

The kernel talks to us over local IPC sockets in a private temporary folder instead of TCP on
localhost.  Nothing leaves the machine either way; IPC just does not make ipykernel print its
"running over TCP without encryption" warning, which is about kernels reachable over a network
and says nothing useful to a reader running the book on their own machine.

Progress: ``on_cell(index, heading)`` is called before every code cell runs, with the nearest
markdown heading above it, so a caller can show which section is running.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable

# The environment every headless run uses, for the book and for regenerating stored outputs.
EXECUTION_ENV = {"TQDM_DISABLE": "1", "PYTHONHASHSEED": "0", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@contextlib.contextmanager
def environ(**values):
    """Set environment variables for the block (``None`` leaves a variable as it is)."""
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


@dataclasses.dataclass
class Failure:
    cell: int                  # 0-based index over all cells
    heading: str               # the nearest markdown heading above it ("" if none)
    error: str                 # "ValueError: message"
    traceback: list[str]       # the last lines of the traceback, without colour codes

    def describe(self, limit: int = 8) -> str:
        where = f"cell {self.cell}" + (f" ({self.heading})" if self.heading else "")
        lines = [f"failed at {where}: {self.error}"]
        lines += [f"  | {line}" for line in self.traceback[-limit:]]
        return "\n".join(lines)


@dataclasses.dataclass
class Run:
    nb: object                 # the executed notebook node (partial if it failed)
    seconds: dict[int, float]  # cell index -> seconds, for the cells that ran
    failure: Failure | None

    @property
    def error(self) -> str | None:
        return None if self.failure is None else self.failure.error


def headings(nb) -> list[str]:
    """For every cell, the last markdown heading at or above it ("" before the first)."""
    out, current = [], ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    current = line.lstrip("#").strip()
        out.append(current)
    return out


def _ipc_kernel_manager(folder: str):
    from jupyter_client import KernelManager

    class IPCKernelManager(KernelManager):
        """A kernel on IPC sockets inside ``folder`` (see the module docstring for why)."""

        def __init__(self, **kw):
            kw.setdefault("transport", "ipc")
            kw.setdefault("ip", os.path.join(folder, "kernel"))
            super().__init__(**kw)

    return IPCKernelManager


def execute_notebook(path: Path, timeout: int = 1800, on_cell: Callable[[int, str], None] | None = None,
                     **env) -> Run:
    """Execute ``path`` in a fresh kernel; ``env`` adds environment variables for the run."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    heads = headings(nb)
    seconds: dict[int, float] = {}
    started: dict[int, float] = {}

    def cell_start(cell, cell_index):
        started[cell_index] = time.perf_counter()
        if on_cell is not None:
            on_cell(cell_index, heads[cell_index])

    def cell_complete(cell, cell_index):
        if cell_index in started:
            seconds[cell_index] = time.perf_counter() - started[cell_index]

    failure = None
    with tempfile.TemporaryDirectory(prefix="hrvit-edu-kernel-") as sockets:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                kernel_manager_class=_ipc_kernel_manager(sockets),
                                on_cell_start=cell_start, on_cell_complete=cell_complete,
                                resources={"metadata": {"path": str(path.parent)}})
        with environ(**EXECUTION_ENV, **env):
            try:
                client.execute()
            except CellExecutionError as e:
                failure = _failure(started, heads, f"{e.ename}: {e.evalue}", _ANSI.sub("", e.traceback or ""))
            except Exception as e:  # noqa: BLE001 - a cell time-out, a dead kernel
                failure = _failure(started, heads, f"{type(e).__name__}: {str(e).strip()}", "")
    return Run(nb, seconds, failure)


def _failure(started: dict, heads: list[str], error: str, tb: str) -> Failure:
    cell = max(started) if started else 0
    lines = [line.rstrip() for line in tb.splitlines() if line.strip() and not set(line.strip()) <= set("-")]
    return Failure(cell, heads[cell] if heads else "", error.splitlines()[0][:300] if error else "error", lines)


__all__ = ["EXECUTION_ENV", "Failure", "Run", "environ", "execute_notebook", "headings"]
