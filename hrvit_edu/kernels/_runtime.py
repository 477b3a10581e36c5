"""How kernels run: one decision, made before any ``@triton.jit`` is seen.

* CUDA present and Triton installed   -> native Triton kernels.
* no CUDA, Triton installed           -> the Triton *interpreter* (``TRITON_INTERPRET=1``) on CPU
                                         tensors: slow (~1000x) but exact enough to test against.
* Triton missing (macOS, Windows)     -> the torch reference path; kernel cells say why.

Triton reads ``TRITON_INTERPRET`` when a kernel is *decorated*, i.e. when its module is imported.
This module is imported by ``hrvit_edu/kernels/__init__.py`` before any kernel module, so the
variable is always set in time: the mistake cannot be made from inside the package.

The visible switch: :func:`set_backend` / :func:`use_backend` (``"auto"``, ``"triton"``,
``"reference"``) or the ``HRVIT_EDU_KERNELS`` environment variable.
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

if HAS_TRITON and not HAS_CUDA:
    # Must happen before the first @triton.jit in this process (see module docstring).
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRET = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

_backend = os.environ.get(ENV_VAR, "auto")
if _backend not in BACKENDS:
    raise ValueError(f"{ENV_VAR}={_backend!r} is not one of {BACKENDS}")


def set_backend(name: str) -> None:
    """Force how kernel ops execute: ``triton``, ``reference`` or ``auto`` (triton when usable)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
    if name == "triton" and not HAS_TRITON:
        raise RuntimeError("backend 'triton' requested but Triton is not installed "
                           "(it is Linux-only; the reference path runs everywhere)")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("reference"): ...`` runs the block on the given backend."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def triton_usable(*tensors: torch.Tensor) -> bool:
    """Would a kernel op run its Triton kernel on these tensors right now?"""
    if _backend == "reference" or not HAS_TRITON:
        return False
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        return True
    return devices == {"cpu"} and INTERPRET


def describe() -> str:
    """One line saying how kernels run here (printed by the notebooks' first cell)."""
    if not HAS_TRITON:
        return "kernels: torch reference (Triton is not installed on this platform)"
    if _backend == "reference":
        return "kernels: torch reference (forced by set_backend/HRVIT_EDU_KERNELS)"
    if INTERPRET:
        return "kernels: Triton interpreter on CPU (correct but ~1000x slower than native; not for timing)"
    return f"kernels: native Triton on {torch.cuda.get_device_name()}"


def skip_reason() -> str | None:
    """Why a *benchmark* of native kernels cannot run here, or None when it can."""
    if not HAS_TRITON:
        return "Triton is not installed (Linux only), so there is no kernel to time"
    if not HAS_CUDA:
        return "no CUDA GPU: the kernel runs in the Triton interpreter, whose timings mean nothing"
    if INTERPRET:
        return "TRITON_INTERPRET is set: interpreter timings mean nothing"
    return None
