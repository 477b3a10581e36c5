"""Diagnosing a wrong answer: turn "not close" into a message that says what to look at."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .core import CheckFailed


def expect_tensor(value, what: str = "result") -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"expected the {what} to be a torch.Tensor, got {type(value).__name__}")
    return value


def expect_float(value, what: str = "result") -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckFailed(f"expected the {what} to be a number, got {type(value).__name__}")
    return float(value)


def _shape_hint(got: tuple, want: tuple) -> str:
    if sorted(got) == sorted(want):
        if len(want) == 4 and got == (want[0], want[2], want[3], want[1]):
            return " - channels last?"
        return " - dimensions permuted?"
    if math.prod(got) == math.prod(want):
        return " - right number of elements: a reshape/view in the wrong order?"
    if len(got) == len(want) - 1:
        return " - a dimension reduced away (keepdim=True)?"
    return ""


def assert_matches(got, want: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-4,
                   what: str = "output", hint: str | Callable[[torch.Tensor, torch.Tensor], str] = "") -> None:
    """Shape, dtype, finiteness, then values; the first problem found is the message."""
    got = expect_tensor(got, what)
    if tuple(got.shape) != tuple(want.shape):
        raise CheckFailed(f"expected {what} shape {tuple(want.shape)}, got {tuple(got.shape)}"
                          + _shape_hint(tuple(got.shape), tuple(want.shape)))
    if got.dtype != want.dtype:
        raise CheckFailed(f"expected {what} dtype {str(want.dtype).replace('torch.', '')}, "
                          f"got {str(got.dtype).replace('torch.', '')}")
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    bad = ~torch.isfinite(g) & torch.isfinite(w)
    if bad.any():
        idx = [int(i) for i in torch.nonzero(bad)[0]]
        raise CheckFailed(f"{what} has NaN/inf at {idx} where the answer is finite"
                          " - division by zero, or exp of a large number?")
    inf = torch.isinf(w) & (g != w)              # where the answer is +-inf, only that value is right
    if inf.any():
        idx = [int(i) for i in torch.nonzero(inf)[0]]
        extra = hint(got, want) if callable(hint) else hint
        raise CheckFailed(f"{what} is {g[tuple(idx)].item():.4g} at {idx} where the answer is "
                          f"{w[tuple(idx)].item():.4g}" + (f" - {extra}" if extra else ""))
    finite = torch.isfinite(w)
    err = torch.where(finite, (g - w).abs(), torch.zeros_like(w))
    tol = atol + rtol * torch.where(finite, w.abs(), torch.zeros_like(w))
    if (err > tol).any():
        flat = int(torch.argmax(err - tol))
        idx = list(torch.unravel_index(torch.tensor(flat), err.shape)) if err.ndim else []
        idx = [int(i) for i in idx]
        extra = hint(got, want) if callable(hint) else hint
        raise CheckFailed(f"{what}: max abs error {err.max().item():.3g} at {idx}"
                          + (f" - {extra}" if extra else ""))
