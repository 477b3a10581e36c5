"""Kernels: each operator's torch reference, Triton kernel and custom op live side by side.

Importing this package first decides how kernels run (see ``_runtime``), so kernel modules
below can never be decorated before the Triton interpreter switch is set.
"""
from ._runtime import (BACKENDS, HAS_CUDA, HAS_TRITON, INTERPRET, describe, get_backend,
                       set_backend, skip_reason, triton_usable, use_backend)

__all__ = ["BACKENDS", "HAS_CUDA", "HAS_TRITON", "INTERPRET", "describe", "get_backend",
           "set_backend", "skip_reason", "triton_usable", "use_backend"]
