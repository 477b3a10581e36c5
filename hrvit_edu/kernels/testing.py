"""One call to check a kernel against its reference: forward, gradients, dtypes, gradcheck.

Every kernel test in the book (and the chapters' correctness cells) goes through
:func:`check_against_reference`, so tolerances and the checked properties are the same
everywhere:

* forward outputs ``assert_close`` to the reference at a per-dtype tolerance;
* gradients of every floating input under a random upstream gradient (a plain ``sum`` would
  hide errors that cancel, e.g. softmax's, whose gradient of a sum is always zero);
* fp16 inputs compare with the reference run in fp32 and rounded, the kernel's own contract.
  (bf16 is skipped on CPU: the interpreter silently mis-computes it; test it on a GPU.)
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

TOLERANCES = {  # dtype -> (atol, rtol)
    torch.float64: (1e-10, 1e-8),
    torch.float32: (2e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


@dataclasses.dataclass
class CheckReport:
    max_abs_err: float
    max_grad_err: float
    cases: int

    def __str__(self) -> str:
        return (f"{self.cases} cases OK: max |out - ref| = {self.max_abs_err:.1e}, "
                f"max |grad - ref grad| = {self.max_grad_err:.1e}")


def _grads(fn, inputs, upstream):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    diff = [t for t in leaves if t.requires_grad]
    gs = torch.autograd.grad(outs, diff, [u.to(o.dtype) for o, u in zip(outs, upstream)],
                             allow_unused=True)
    return outs, [torch.zeros_like(t) if g is None else g for t, g in zip(diff, gs)]


def check_against_reference(kernel: Callable, reference: Callable,
                            make_inputs: Callable[[tuple, torch.dtype, torch.Generator], Sequence[torch.Tensor]],
                            shapes: Sequence[tuple], dtypes: Sequence[torch.dtype] = (torch.float32, torch.float16),
                            grad: bool = True, seed: int = 0, device: str = "cpu") -> CheckReport:
    """Raise ``AssertionError`` (from ``torch.testing.assert_close``) on the first mismatch.

    ``make_inputs(shape, dtype, gen)`` returns the positional inputs for one case.
    """
    worst, worst_g, n = 0.0, 0.0, 0
    for shape in shapes:
        for dtype in dtypes:
            if dtype == torch.bfloat16 and device == "cpu":
                continue
            gen = torch.Generator().manual_seed(seed)
            inputs = [t.to(device) for t in make_inputs(shape, dtype, gen)]
            atol, rtol = TOLERANCES[dtype]
            ref_inputs = [t.double() if t.is_floating_point() and dtype != torch.float64 else t
                          for t in inputs]
            if grad:
                with torch.no_grad():   # the (cheap) reference tells the output shapes
                    r = reference(*ref_inputs)
                shapes_out = [t.shape for t in (r if isinstance(r, (tuple, list)) else (r,))]
                upstream = [torch.randn(sh, generator=gen).to(device) for sh in shapes_out]
                outs, g = _grads(kernel, inputs, upstream)
                ref_outs, ref_g = _grads(reference, ref_inputs, upstream)
            else:
                with torch.no_grad():
                    o = kernel(*inputs)
                    r = reference(*ref_inputs)
                outs = o if isinstance(o, (tuple, list)) else (o,)
                ref_outs = r if isinstance(r, (tuple, list)) else (r,)
                g, ref_g = [], []
            for o, r in zip(outs, ref_outs):
                if o.dtype != dtype and o.is_floating_point():
                    raise AssertionError(f"kernel returned {o.dtype} for {dtype} inputs")
                r = r.to(o.dtype)
                torch.testing.assert_close(o, r, atol=atol, rtol=rtol,
                                           msg=lambda m: f"forward, shape {shape}, {dtype}: {m}")
                worst = max(worst, (o.double() - r.double()).abs().max().item())
            for a, b in zip(g, ref_g):
                b = b.to(a.dtype)
                torch.testing.assert_close(a, b, atol=atol * 10, rtol=rtol * 10,
                                           msg=lambda m: f"gradient, shape {shape}, {dtype}: {m}")
                worst_g = max(worst_g, (a.double() - b.double()).abs().max().item())
            n += 1
    return CheckReport(worst, worst_g, n)


def gradcheck_op(fn: Callable, inputs: Sequence[torch.Tensor], **kw) -> bool:
    """``torch.autograd.gradcheck`` in float64 (its tolerances assume double precision)."""
    leaves = [t.detach().double().requires_grad_(True) if t.is_floating_point() else t
              for t in inputs]
    return torch.autograd.gradcheck(fn, leaves, **kw)
