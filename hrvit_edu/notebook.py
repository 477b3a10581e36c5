"""The shared first cell of every chapter and exercise notebook.

``setup_notebook()`` makes a notebook reproducible and quiet enough for strict nbval:
seeds (python, numpy, torch), deterministic algorithms, a fixed thread count, rounded print
options, PNG-only inline figures, warning filters, and the kernel runtime decision (on a machine
without CUDA the Triton interpreter is switched on, before any kernel module is imported).
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .seeding import seed_everything  # noqa: F401  (re-exported: notebooks import it from here)

REPORT_DIR_ENV = "HRVIT_EDU_REPORT_DIR"
RUN_CACHE_ENV = "HRVIT_EDU_RUN_CACHE"
THREADS_ENV = "HRVIT_EDU_THREADS"


@dataclasses.dataclass(frozen=True)
class NotebookContext:
    seed: int
    profile: str
    device: torch.device
    threads: int
    kernels: str

    def __str__(self) -> str:
        return f"profile {self.profile} | device {self.device.type} | {self.kernels}"


def quiet_warnings() -> None:
    """Filter warnings that carry temp paths or versions into stderr (nbval compares stderr)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    warnings.filterwarnings("ignore", message="IProgress not found.*")   # tqdm without ipywidgets


def setup_notebook(seed: int = 0, threads: int | None = None, profile: str | None = None) -> NotebookContext:
    """Run once, first, in every notebook.  Prints one line saying where the notebook runs."""
    from . import kernels
    from .profiles import get_profile

    kernels.enable_interpreter()  # before any kernel module: CPU kernels run in the interpreter

    prof = get_profile(profile)
    quiet_warnings()
    threads = int(threads or os.environ.get(THREADS_ENV) or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    seed_everything(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.set_printoptions(precision=4, sci_mode=False, linewidth=100)
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    try:
        import matplotlib.pyplot as plt
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")          # never SVG/PDF: nbval would compare them
        plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "font.size": 9})
    except ImportError:
        pass
    ctx = NotebookContext(seed, prof.name,
                          torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                          threads, kernels.describe())
    print(ctx)
    return ctx


def report(chapter: str, **metrics) -> dict:
    """Hand a chapter's final numbers to the book runner (``python -m hrvit_edu.book``).

    Writes ``$HRVIT_EDU_REPORT_DIR/<chapter>.json`` when the runner set that variable; prints
    nothing, so it is safe in compared cells.
    """
    clean = {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v)
             for k, v in metrics.items()}
    out = os.environ.get(REPORT_DIR_ENV)
    if out:
        path = Path(out) / f"{chapter}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(clean, indent=1, sort_keys=True))
    return clean


def show_source(obj) -> None:
    """Print the source of a package function, class or Triton kernel (the book shows, never copies)."""
    import inspect
    import textwrap

    fn = getattr(obj, "fn", obj)           # triton JITFunction / InterpretedFunction -> python fn
    fn = getattr(fn, "_init_fn", fn)       # torch.library.custom_op -> the decorated function
    print(textwrap.dedent(inspect.getsource(fn)).rstrip())


def run_cache() -> str | None:
    """The folder of finished training runs chapters share (``$HRVIT_EDU_RUN_CACHE``), or None.

    The book runner and the test command set it, so a chapter that reports against an earlier
    chapter's model loads that run instead of training it again.
    """
    return os.environ.get(RUN_CACHE_ENV) or None
