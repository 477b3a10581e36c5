"""How kernels run: decided lazily, changed only where the book asks for it.

* CUDA present and Triton installed   -> native Triton kernels.
* no CUDA, Triton installed           -> the Triton *interpreter* on CPU tensors (slow, ~1000x,
                                         but exact enough to test against) -- only once
                                         :func:`enable_interpreter` has been called;
                                         otherwise the torch reference path.
* Triton missing (macOS, Windows)     -> the torch reference path; kernel cells say why.

Importing the package changes nothing in ``os.environ``.  Triton reads ``TRITON_INTERPRET`` when a
kernel is *decorated* (when its module is imported) and again inside its runtime, so the switch
must be on before the first kernel module is imported and stay on: :func:`enable_interpreter`
sets it, and refuses with a clear message when a kernel module was already imported without it.
``setup_notebook()`` (every chapter's first cell), the grader and the test suite call it.

The one visible switch: :func:`set_backend` / :func:`use_backend` (``"auto"``, ``"triton"``,
``"reference"``), or the ``HRVIT_EDU_KERNELS`` environment variable, read on first use.  It
reaches both the ops (:func:`triton_usable`) and the models (:func:`prefer_kernel`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "HRVIT_EDU_KERNELS"

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()

_backend: str | None = None                 # None: not decided yet (read ENV_VAR on first use)
_kernel_modules: dict[str, bool] = {}       # kernel module -> decorated in interpreter mode?


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def enable_interpreter() -> bool:
    """Run kernels in the Triton interpreter on CPU tensors (no-op with CUDA or without Triton).

    Must come before any kernel module is imported; returns whether the interpreter is on.
    """
    if not HAS_TRITON or HAS_CUDA:
        return False
    native = [m for m, interp in _kernel_modules.items() if not interp]
    if native and not _env_interpret():
        raise RuntimeError(
            f"kernel module(s) {', '.join(native)} were imported before the Triton interpreter was "
            "switched on, so their kernels cannot run on the CPU; call setup_notebook() (or "
            "hrvit_edu.kernels.enable_interpreter()) first, before importing models or kernels")
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def register_kernel_module(name: str) -> None:
    """Called by each kernel module as it is imported: remembers how its kernels were built."""
    _kernel_modules[name] = _env_interpret()


def interpreting() -> bool:
    """Do the kernels run in the interpreter (switch on, no CUDA, every kernel module built so)?"""
    return (HAS_TRITON and not HAS_CUDA and _env_interpret()
            and all(_kernel_modules.values()))


def set_backend(name: str) -> None:
    """Force how kernels execute: ``triton``, ``reference`` or ``auto`` (triton when usable)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
    if name == "triton" and not HAS_TRITON:
        raise RuntimeError("backend 'triton' requested but Triton is not installed "
                           "(it is Linux-only; the reference path runs everywhere)")
    _backend = name


def get_backend() -> str:
    global _backend
    if _backend is None:
        value = os.environ.get(ENV_VAR, "").strip() or "auto"
        if value not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={value!r} is not one of {BACKENDS}")
        _backend = value
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("reference"): ...`` runs the block (ops and models) on that backend."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def triton_usable(*tensors: torch.Tensor) -> bool:
    """Would a kernel op run its Triton kernel on these tensors right now?"""
    if get_backend() == "reference" or not HAS_TRITON:
        return False
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        return True
    return devices == {"cpu"} and interpreting()


def prefer_kernel(x: torch.Tensor) -> bool:
    """Should a *model* call its fused op on ``x`` (when the model was not told either way)?

    ``auto``: only natively on CUDA (a model never drops into the interpreter by itself);
    ``triton``: always (on CPU that means the interpreter: slow, for testing); ``reference``: never.
    """
    backend = get_backend()
    if backend == "reference" or not HAS_TRITON:
        return False
    if backend == "triton":
        return True
    return x.is_cuda


def describe() -> str:
    """One line saying how kernels run here (printed by the notebooks' first cell)."""
    if not HAS_TRITON:
        return "kernels: torch reference (Triton is not installed on this platform)"
    if get_backend() == "reference":
        return "kernels: torch reference (forced by set_backend/HRVIT_EDU_KERNELS)"
    if HAS_CUDA:
        return f"kernels: native Triton on {torch.cuda.get_device_name()}"
    if interpreting() or (_env_interpret() and not _kernel_modules):
        return "kernels: Triton interpreter on CPU (correct but ~1000x slower than native; not for timing)"
    return "kernels: torch reference on CPU (the Triton interpreter is off; see enable_interpreter)"


def skip_reason() -> str | None:
    """Why a *benchmark* of native kernels cannot run here, or None when it can."""
    if not HAS_TRITON:
        return "Triton is not installed (Linux only), so there is no kernel to time"
    if not HAS_CUDA:
        return "no CUDA GPU: the kernel runs in the Triton interpreter, whose timings mean nothing"
    if _env_interpret():
        return "TRITON_INTERPRET is set: interpreter timings mean nothing"
    return None


# ------------------------------------------------------------------------------ validation
def require_float(op: str, **tensors: torch.Tensor) -> None:
    """Every named tensor floating point, one dtype, one device; a clear error otherwise."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype} "
                            "(integers would be truncated silently)")
    dtypes = {n: t.dtype for n, t in tensors.items()}
    if len(set(dtypes.values())) > 1:          # dtypes and devices hash; shapes may be symbolic
        raise TypeError(f"{op}: inputs must share one dtype, got "
                        + ", ".join(f"{n} {str(d).replace('torch.', '')}" for n, d in dtypes.items()))
    devices = {n: t.device for n, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"{op}: inputs must be on one device, got "
                         + ", ".join(f"{n} {d}" for n, d in devices.items()))
