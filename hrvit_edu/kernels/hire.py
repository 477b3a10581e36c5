"""Hire-MLP's cross-region shift + inner-region rearrangement + first linear, fused.

For the height branch (the width branch is the same op on the transposed view), with X (B, C, H, W),
region size p, shift s, H' = ceil(H/p) p, G = H'/p and W_1 (O, C p):

    Z[b, o, g, w] = sum_{c, i} W_1[o, c p + i] X[b, c, (g p + i - s) mod H, w]           (4.4)

i.e. eq. (4.1)-(4.2) followed by W_1.  Eager PyTorch materialises the rolled map, the padded map
and the rearranged (B, C p, G, W) tensor before the 1x1 convolution reads it again; here the
(mod H) index arithmetic sits inside the GEMM's loads, so X is read straight from its own layout
and only Z is written.

As a GEMM: rows m = (b, g, w) (M = B G W), columns o (O), reduction k = (c, i) (K = C p); the
A-operand row of m is gathered, A[m, c p + i] = X[b, c, (g p + i - s) mod H, w].

Backward, with dZ (B, O, G, W):

    dW_1[o, k] = sum_m dZ[m, o] A[m, k]                   the same gathered A, reduced over m
    dX[b, c, h, w] = sum over padded rows r = g p + i with (r - s) mod H = h of
                     sum_o dZ[b, o, g, w] W_1[o, c p + i]

Row r of the padded map and r + H are copies of the same input row, so each input row h collects
one term for r_0 = (h + s) mod H and one for every r_0 + jH < H'.  The dX kernel gives each
program one offset i (so the weight slice W_1[:, c p + i] is one (O, C) matrix: a plain
``tl.dot``); the copies r_0 + jH have offset (i + jH) mod p, again one slice per program.  Every
output element is written by exactly one program: no atomics, deterministic.
"""
from __future__ import annotations

import torch

from ._runtime import HAS_TRITON, register_kernel_module, require_float, triton_usable

register_kernel_module(__name__)

AXES = ("h", "w")


# ------------------------------------------------------------------------------ reference
def _check(x, w1, p, s, axis):
    require_float("region_linear", x=x, w1=w1)
    if x.ndim != 4:
        raise ValueError(f"region_linear expects x (B, C, H, W), got shape {tuple(x.shape)}")
    if w1.ndim != 2:
        raise ValueError(f"region_linear expects w1 (O, C*p), got shape {tuple(w1.shape)}")
    if axis not in AXES:
        raise ValueError(f"axis must be 'h' or 'w', got {axis!r}")
    if not isinstance(p, int) or p < 1 or not isinstance(s, int) or s < 0:
        raise ValueError(f"region size p >= 1 and shift s >= 0 must be integers, got p={p!r}, s={s!r}")
    if w1.shape[1] != x.shape[1] * p:
        raise ValueError(f"w1 has {w1.shape[1]} input channels, but C*p = {x.shape[1]}*{p} = {x.shape[1] * p}")


def _rows(h: int, p: int, s: int, device) -> torch.Tensor:
    """Source row of every padded row r < H': (r - s) mod H  (eq. 4.2)."""
    return (torch.arange(-(-h // p) * p, device=device) - s) % h


def region_linear_reference(x: torch.Tensor, w1: torch.Tensor, p: int, s: int = 0, axis: str = "h") -> torch.Tensor:
    """Eq. (4.4) in torch: gather the rows, stack regions on channels, one matmul.

    x (B, C, H, W), w1 (O, C p) -> (B, O, ceil(H/p), W) for axis "h", (B, O, H, ceil(W/p)) for "w".
    """
    _check(x, w1, p, s, axis)
    if axis == "w":
        return region_linear_reference(x.transpose(2, 3), w1, p, s, "h").transpose(2, 3)
    b, c, h, w = x.shape
    a = x.index_select(2, _rows(h, p, s, x.device))                          # (B, C, H', W)
    a = a.reshape(b, c, -1, p, w).transpose(2, 3).reshape(b, c * p, -1, w)   # (B, C p, G, W)
    return torch.einsum("ok,bkgw->bogw", w1, a)


# ------------------------------------------------------------------------------ Triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _gathered_a(X, m, k, M, K, G, W, H, sxb, sxc, sxh, sxw, P: tl.constexpr, S: tl.constexpr):
        """A[m, k] = X[b, c, (g P + i - S) mod H, w] for row indices m (BM,) and k (BK,)."""
        w_ = m % W
        g = (m // W) % G
        b = m // (W * G)
        c = k // P
        i = k % P
        r = g[:, None] * P + i[None, :] - S
        src = (r % H + H) % H                                   # a true modulo for r < 0 too
        ptr = X + b[:, None] * sxb + c[None, :] * sxc + src * sxh + w_[:, None] * sxw
        return tl.load(ptr, mask=(m[:, None] < M) & (k[None, :] < K), other=0.0)

    @triton.jit
    def _region_linear_fwd_kernel(X, W1, Z, M, K, O, G, W, H, sxb, sxc, sxh, sxw, szb, szo, szg, szw,
                                  P: tl.constexpr, S: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                                  BK: tl.constexpr, ACC: tl.constexpr):
        m = tl.program_id(0) * BM + tl.arange(0, BM)
        o = tl.program_id(1) * BN + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), dtype=ACC)
        for k0 in range(0, K, BK):
            k = k0 + tl.arange(0, BK)
            a = _gathered_a(X, m, k, M, K, G, W, H, sxb, sxc, sxh, sxw, P, S).to(ACC)
            wt = tl.load(W1 + o[:, None] * K + k[None, :], mask=(o[:, None] < O) & (k[None, :] < K),
                         other=0.0).to(ACC)
            acc += tl.dot(a, tl.trans(wt), input_precision="ieee")
        w_, g, b = m % W, (m // W) % G, m // (W * G)
        ptr = Z + b[:, None] * szb + o[None, :] * szo + g[:, None] * szg + w_[:, None] * szw
        tl.store(ptr, acc.to(Z.dtype.element_ty), mask=(m[:, None] < M) & (o[None, :] < O))

    @triton.jit
    def _region_linear_dw_kernel(X, DZ, DW1, M, K, O, G, W, H, sxb, sxc, sxh, sxw, szb, szo, szg, szw,
                                 P: tl.constexpr, S: tl.constexpr, BO: tl.constexpr, BK: tl.constexpr,
                                 BM: tl.constexpr, ACC: tl.constexpr):
        o = tl.program_id(0) * BO + tl.arange(0, BO)
        k = tl.program_id(1) * BK + tl.arange(0, BK)
        acc = tl.zeros((BO, BK), dtype=ACC)
        for m0 in range(0, M, BM):
            m = m0 + tl.arange(0, BM)
            w_, g, b = m % W, (m // W) % G, m // (W * G)
            dz = tl.load(DZ + b[:, None] * szb + o[None, :] * szo + g[:, None] * szg + w_[:, None] * szw,
                         mask=(m[:, None] < M) & (o[None, :] < O), other=0.0).to(ACC)          # (BM, BO)
            a = _gathered_a(X, m, k, M, K, G, W, H, sxb, sxc, sxh, sxw, P, S).to(ACC)          # (BM, BK)
            acc += tl.dot(tl.trans(dz), a, input_precision="ieee")
        tl.store(DW1 + o[:, None] * K + k[None, :], acc, mask=(o[:, None] < O) & (k[None, :] < K))

    @triton.jit
    def _region_linear_dx_kernel(DZ, W1, DX, MG, C, O, G, W, H, szb, szo, szg, szw, sxb, sxc, sxh, sxw,
                                 P: tl.constexpr, S: tl.constexpr, NREP: tl.constexpr, BM: tl.constexpr,
                                 BC: tl.constexpr, BO: tl.constexpr, ACC: tl.constexpr):
        # rows (b, g, w) of one offset i = program_id(2): real padded row r = g P + i < H
        m = tl.program_id(0) * BM + tl.arange(0, BM)
        c = tl.program_id(1) * BC + tl.arange(0, BC)
        i = tl.program_id(2)
        w_, g, b = m % W, (m // W) % G, m // (W * G)
        r = g * P + i
        row_ok = (m < MG) & (r < H)
        acc = tl.zeros((BM, BC), dtype=ACC)
        for j in range(NREP):                                  # the copies r + jH < H' = G P
            rr = r + j * H
            ok = row_ok & (rr < G * P)
            gj = rr // P
            ij = (i + j * H) % P                               # one weight slice per program
            for o0 in range(0, O, BO):
                o = o0 + tl.arange(0, BO)
                dz = tl.load(DZ + b[:, None] * szb + o[None, :] * szo + gj[:, None] * szg + w_[:, None] * szw,
                             mask=ok[:, None] & (o[None, :] < O), other=0.0).to(ACC)        # (BM, BO)
                wt = tl.load(W1 + o[:, None] * (C * P) + c[None, :] * P + ij,
                             mask=(o[:, None] < O) & (c[None, :] < C), other=0.0).to(ACC)    # (BO, BC)
                acc += tl.dot(dz, wt, input_precision="ieee")
        h = ((r - S) % H + H) % H
        ptr = DX + b[:, None] * sxb + c[None, :] * sxc + h[:, None] * sxh + w_[:, None] * sxw
        tl.store(ptr, acc.to(DX.dtype.element_ty), mask=row_ok[:, None] & (c[None, :] < C))


BM, BN, BK = 32, 32, 32


def _acc(t):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _out_shape(x, o, p, axis):
    b, _, h, w = x.shape
    return (b, o, -(-h // p), w) if axis == "h" else (b, o, h, -(-w // p))


def _as_h(t, axis):
    """The height-branch view of a map: the width branch is the height branch of the transpose."""
    return t if axis == "h" else t.transpose(2, 3)


def region_linear_triton(x, w1, p, s=0, axis="h"):
    """Eq. (4.4) as one kernel launch.  Any strides are read in place (the width branch reads the
    transposed view); the output is contiguous."""
    _check(x, w1, p, s, axis)
    z = torch.empty(_out_shape(x, w1.shape[0], p, axis), device=x.device, dtype=x.dtype)
    xh, zh = _as_h(x, axis), _as_h(z, axis)
    b, c, h, w = xh.shape
    g, o = zh.shape[2], w1.shape[0]
    m = b * g * w
    _region_linear_fwd_kernel[(triton.cdiv(m, BM), triton.cdiv(o, BN))](
        xh, w1.contiguous(), zh, m, c * p, o, g, w, h, *xh.stride(), *zh.stride(),
        P=p, S=s % h, BM=BM, BN=BN, BK=BK, ACC=_acc(x))
    return z


def region_linear_backward_triton(x, dz, w1, p, s=0, axis="h"):
    """(dX, dW_1) of eq. (4.4): two launches, no atomics."""
    xh, dzh = _as_h(x, axis), _as_h(dz, axis)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    dxh = _as_h(dx, axis)
    b, c, h, w = xh.shape
    g, o = dzh.shape[2], w1.shape[0]
    k, m = c * p, b * g * w
    w1c = w1.contiguous()
    dw = torch.empty(o, k, device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    _region_linear_dw_kernel[(triton.cdiv(o, BN), triton.cdiv(k, BK))](
        xh, dzh, dw, m, k, o, g, w, h, *xh.stride(), *dzh.stride(), P=p, S=s % h, BO=BN, BK=BK, BM=BM,
        ACC=_acc(x))
    nrep = -(-g * p // h)                                  # copies of a row in the padded map
    _region_linear_dx_kernel[(triton.cdiv(m, BM), triton.cdiv(c, BN), p)](
        dzh, w1c, dxh, m, c, o, g, w, h, *dzh.stride(), *dxh.stride(), P=p, S=s % h, NREP=nrep,
        BM=BM, BC=BN, BO=BK, ACC=_acc(x))
    return dx, dw.to(w1.dtype)


def region_linear_backward_reference(x, dz, w1, p, s=0, axis="h"):
    """The backward equations of the module docstring, in torch (used when Triton is not)."""
    if axis == "w":
        dx, dw = region_linear_backward_reference(x.transpose(2, 3), dz.transpose(2, 3), w1, p, s, "h")
        return dx.transpose(2, 3), dw
    b, c, h, w = x.shape
    g = -(-h // p)
    rows = _rows(h, p, s, x.device)
    a = x.index_select(2, rows).reshape(b, c, g, p, w).transpose(2, 3).reshape(b, c * p, g, w)
    dw = torch.einsum("bogw,bkgw->ok", dz, a)
    da = torch.einsum("bogw,ok->bkgw", dz, w1)                                    # (B, C p, G, W)
    da = da.reshape(b, c, p, g, w).transpose(2, 3).reshape(b, c, g * p, w)        # padded rows
    dx = torch.zeros_like(x).index_add_(2, rows, da)                             # copies add up
    return dx, dw


# ------------------------------------------------------------------------------ custom op
@torch.library.custom_op("hrvit_edu::region_linear", mutates_args=())
def region_linear(x: torch.Tensor, w1: torch.Tensor, p: int, s: int = 0, axis: str = "h") -> torch.Tensor:
    """Fused eq. (4.4): the Triton kernel when usable, else :func:`region_linear_reference`."""
    if triton_usable(x, w1) and (x.is_cuda or x.dtype != torch.bfloat16):
        return region_linear_triton(x, w1, p, s, axis)
    return region_linear_reference(x, w1, p, s, axis).contiguous()


@region_linear.register_fake
def _(x, w1, p, s=0, axis="h"):
    _check(x, w1, p, s, axis)
    return x.new_empty(_out_shape(x, w1.shape[0], p, axis))


@torch.library.custom_op("hrvit_edu::region_linear_backward", mutates_args=())
def region_linear_backward(x: torch.Tensor, dz: torch.Tensor, w1: torch.Tensor, p: int, s: int = 0,
                           axis: str = "h") -> list[torch.Tensor]:
    require_float("region_linear_backward", x=x, dz=dz, w1=w1)
    if triton_usable(x, w1) and (x.is_cuda or x.dtype != torch.bfloat16):
        _check(x, w1, p, s, axis)
        return list(region_linear_backward_triton(x, dz, w1, p, s, axis))
    return [t.contiguous() for t in region_linear_backward_reference(x, dz, w1, p, s, axis)]


@region_linear_backward.register_fake
def _(x, dz, w1, p, s=0, axis="h"):
    return [torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w1)]


def _setup_context(ctx, inputs, output):
    x, w1, p, s, axis = inputs
    ctx.save_for_backward(x, w1)
    ctx.p, ctx.s, ctx.axis = p, s, axis


def _backward(ctx, dz):
    x, w1 = ctx.saved_tensors
    dx, dw = region_linear_backward(x, dz, w1, ctx.p, ctx.s, ctx.axis)
    return dx, dw, None, None, None


region_linear.register_autograd(_backward, setup_context=_setup_context)
