"""Preface kernel: a fused row softmax (forward and backward), the "hello world" of Triton.

For a row x in R^N:

    y_i = exp(x_i - m) / sum_j exp(x_j - m),   m = max_j x_j            (eq. S1, forward)
    dx_i = y_i * (dy_i - sum_j y_j dy_j)                                 (eq. S2, backward)

Subtracting the row maximum m changes nothing mathematically (it cancels between numerator and
denominator) but keeps exp() from overflowing.  Eager PyTorch reads x, writes y (2 passes over
memory per row at best); the fused kernel keeps one row in registers, so it reads N and writes N
elements: the op is memory-bound, and bytes moved predict its speed.

Side by side below: the torch reference, the Triton kernels, and the custom op that ties them
to autograd and ``torch.compile``.
"""
from __future__ import annotations

import torch

from ._runtime import HAS_TRITON, register_kernel_module, require_float, triton_usable

register_kernel_module(__name__)
MAX_COLS = 1 << 16   # one row per program, held in registers


# ------------------------------------------------------------------------------ reference
def softmax_reference(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """eq. S1 with torch ops (fp16/bf16 inputs are computed in fp32, like the kernel)."""
    require_float("softmax_reference", x=x)
    acc = x if x.dtype == torch.float64 else x.float()
    return torch.softmax(acc, dim).to(x.dtype)


def softmax_backward_reference(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """eq. S2 over the last axis."""
    acc_t = torch.float64 if y.dtype == torch.float64 else torch.float32
    yf, dyf = y.to(acc_t), dy.to(acc_t)
    return (yf * (dyf - (yf * dyf).sum(-1, keepdim=True))).to(y.dtype)


# ------------------------------------------------------------------------------ Triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _softmax_fwd_kernel(X, Y, n_cols, stride_x, stride_y,
                            BLOCK: tl.constexpr, UPCAST: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols                       # BLOCK is a power of 2 >= n_cols
        x = tl.load(X + row * stride_x + cols, mask=mask, other=-float("inf"))
        if UPCAST:                                 # fp16/bf16 math in fp32 (bf16 must be, see docs)
            x = x.to(tl.float32)
        z = x - tl.max(x, axis=0)                  # masked lanes: -inf - m = -inf, exp -> 0
        e = tl.exp(z)
        y = e / tl.sum(e, axis=0)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _softmax_bwd_kernel(Yp, DY, DX, n_cols, stride_y, stride_dy, stride_dx,
                            BLOCK: tl.constexpr, UPCAST: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        y = tl.load(Yp + row * stride_y + cols, mask=mask, other=0.0)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0)
        if UPCAST:
            y = y.to(tl.float32)
            dy = dy.to(tl.float32)
        dx = y * (dy - tl.sum(y * dy, axis=0))     # eq. S2
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)


def _validate_rows(op: str, **tensors: torch.Tensor) -> None:
    """The one input check of the row ops, shared by the Triton and the reference path."""
    require_float(op, **tensors)
    shapes = {n: tuple(t.shape) for n, t in tensors.items()}
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise ValueError(f"{op}: {name} must be a 2-D (rows, cols) tensor, got shape {shape}")
    first = next(iter(shapes.values()))
    if any(shape != first for shape in shapes.values()):      # no set(): shapes may be symbolic
        raise ValueError(f"{op}: shapes must match, got " + ", ".join(f"{n} {s}" for n, s in shapes.items()))


def _use_triton(*tensors: torch.Tensor) -> bool:
    # the interpreter casts bf16 to fp32 on load and back wrongly: bf16 on CPU takes the reference
    return triton_usable(*tensors) and (tensors[0].is_cuda or tensors[0].dtype != torch.bfloat16) \
        and tensors[0].shape[1] <= MAX_COLS


def _check_rows(x: torch.Tensor) -> None:
    """What the Triton launch needs beyond :func:`_validate_rows`: one row fits a program."""
    if x.shape[1] > MAX_COLS:
        raise ValueError(f"rows longer than {MAX_COLS} do not fit one program; got {x.shape[1]}")
    if x.stride(1) != 1:
        raise ValueError("rows must be contiguous (stride 1 along the last axis)")


def softmax_rows_triton(x: torch.Tensor) -> torch.Tensor:
    """Launch eq. S1 on a 2-D tensor: one program per row."""
    _validate_rows("softmax_rows", x=x)
    _check_rows(x)
    y = torch.empty_like(x)
    block = triton.next_power_of_2(max(x.shape[1], 16))
    _softmax_fwd_kernel[(x.shape[0],)](x, y, x.shape[1], x.stride(0), y.stride(0),
                                       BLOCK=block, UPCAST=x.dtype != torch.float64)
    return y


def softmax_rows_backward_triton(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Launch eq. S2 on 2-D tensors."""
    _validate_rows("softmax_rows_backward", y=y, dy=dy)
    _check_rows(y)
    _check_rows(dy)
    dx = torch.empty_like(y)
    block = triton.next_power_of_2(max(y.shape[1], 16))
    _softmax_bwd_kernel[(y.shape[0],)](y, dy, dx, y.shape[1], y.stride(0), dy.stride(0),
                                       dx.stride(0), BLOCK=block, UPCAST=y.dtype != torch.float64)
    return dx


# ------------------------------------------------------------------------------ custom op
@torch.library.custom_op("hrvit_edu::softmax_rows", mutates_args=())
def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Row softmax of a 2-D tensor: Triton when usable (see ``kernels.describe()``), else torch."""
    _validate_rows("softmax_rows", x=x)
    if _use_triton(x):
        return softmax_rows_triton(x.contiguous())
    return softmax_reference(x)


@softmax_rows.register_fake
def _(x):
    _validate_rows("softmax_rows", x=x)
    return torch.empty_like(x)


@torch.library.custom_op("hrvit_edu::softmax_rows_backward", mutates_args=())
def softmax_rows_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    _validate_rows("softmax_rows_backward", y=y, dy=dy)
    if _use_triton(y, dy):
        return softmax_rows_backward_triton(y.contiguous(), dy.contiguous())
    return softmax_backward_reference(y, dy)


@softmax_rows_backward.register_fake
def _(y, dy):
    _validate_rows("softmax_rows_backward", y=y, dy=dy)
    return torch.empty_like(y)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)


def _backward(ctx, grad):
    (y,) = ctx.saved_tensors
    # Incoming gradients may be expanded/strided (opcheck finds this): make them contiguous.
    return softmax_rows_backward(y, grad.contiguous())


softmax_rows.register_autograd(_backward, setup_context=_setup_context)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax along ``dim`` for any rank, through the fused op (autograd and compile aware)."""
    require_float("softmax", x=x)
    if x.ndim == 0:
        raise ValueError("softmax needs at least one dimension")
    moved = x.movedim(dim, -1)
    shape = moved.shape
    y = softmax_rows(moved.reshape(-1, shape[-1]).contiguous())
    return y.reshape(shape).movedim(-1, dim)
