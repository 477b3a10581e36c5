"""Kernels: each operator's torch reference, Triton kernel and custom op live side by side.

How they run (native, interpreter, reference) is decided by ``_runtime``; importing this package
changes nothing: the Triton interpreter is switched on by :func:`enable_interpreter`, which
``setup_notebook()`` calls before any kernel module is imported.
"""
from ._runtime import (
    BACKENDS,
    HAS_CUDA,
    HAS_TRITON,
    describe,
    enable_interpreter,
    get_backend,
    interpreting,
    prefer_kernel,
    set_backend,
    skip_reason,
    triton_usable,
    use_backend,
)

__all__ = ["BACKENDS", "HAS_CUDA", "HAS_TRITON", "describe", "enable_interpreter", "get_backend",
           "interpreting", "prefer_kernel", "set_backend", "skip_reason", "triton_usable", "use_backend"]
