"""HRViT's diversity-enhanced shortcut (DES) fused into one pass over the tokens.

Per token x in R^C, folded row-major into X in R^{K x P} (C = K P):

    Y = X B^T + 1 b_B^T        (K x P)      right factor, along P
    G = gelu(Y)                              (tanh-free, erf form, as nn.GELU)
    U = A G + b_A 1^T          (K x P)      left factor, along K       (ch. 01, eq. 1.3)

Backward, with dU the upstream gradient of one token:

    dG = A^T dU,   dY = dG * gelu'(Y),   dX = dY B
    dA = sum_tokens dU G^T,  db_A = sum_tokens dU 1,  dB = sum_tokens dY^T X,  db_B = sum_tokens 1^T dY

Traffic: eager PyTorch runs five ops (right matmul, + b_B, GELU, left matmul, + b_A), each
reading and writing an N x C tensor: about 10 N C elements.  The fused kernel reads X once and
writes U once: 2 N C elements plus the (tiny) factors.  Useful work is 2 C (K + P) FLOPs per
token, an intensity of (K + P)/4 FLOP/byte in fp32 (5 at C = 96); but the tile is padded to
powers of two >= 16, so the executed work is larger (4.3x at C = 96, K = 12, P = 8) and the
executed intensity sits near the fp32 FMA ridge (~20 FLOP/byte on an H100; the kernels use
``input_precision="ieee"``, no TF32).  Chapter 01 computes the prediction.

Kernel layout: one program owns BLOCK_N tokens, loaded as a (BLOCK_N, K, P) tile (padded to
powers of two >= 16 so ``tl.dot`` is legal on every GPU; padded lanes are masked to zero).
The right factor is one (BLOCK_N*K, P) x (P, P) product; the left factor is applied to the
transposed tile, (BLOCK_N*P, K) x (K, K).  Weight gradients are per-program partial sums that
torch adds up afterwards (deterministic; no atomics).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._runtime import HAS_TRITON, register_kernel_module, require_float, triton_usable

register_kernel_module(__name__)

ACTIVATIONS = ("gelu", "identity")


# ------------------------------------------------------------------------------ reference
def des_reference(x: torch.Tensor, a_w: torch.Tensor, a_b: torch.Tensor, b_w: torch.Tensor,
                  b_b: torch.Tensor, act: str = "gelu") -> torch.Tensor:
    """eq. (1.3) with torch ops.  x (N, C); A = a_w (K, K), b_A (K,); B = b_w (P, P), b_B (P,)."""
    _check(x, a_w, a_b, b_w, b_b, act)
    k, p = a_w.shape[0], b_w.shape[0]
    xm = x.reshape(-1, k, p)
    y = xm @ b_w.T + b_b
    g = F.gelu(y) if act == "gelu" else y
    return (a_w @ g + a_b[:, None]).reshape(x.shape)


def _check(x, a_w, a_b, b_w, b_b, act):
    """The one input check of DES, shared by the Triton and the reference path."""
    require_float("des", x=x, a_w=a_w, a_b=a_b, b_w=b_w, b_b=b_b)
    if act not in ACTIVATIONS:
        raise ValueError(f"DES kernel activation must be one of {ACTIVATIONS}, got {act!r}")
    if x.ndim != 2:
        raise ValueError(f"DES kernel takes tokens (N, C), got shape {tuple(x.shape)}")
    k, p = a_w.shape[0], b_w.shape[0]
    if a_w.shape != (k, k) or b_w.shape != (p, p) or a_b.shape != (k,) or b_b.shape != (p,):
        raise ValueError("DES factors must be A (K, K), b_A (K,), B (P, P), b_B (P,)")
    if x.shape[1] != k * p:
        raise ValueError(f"x has {x.shape[1]} channels but the factors give K*P = {k}*{p} = {k * p}")


def _pad(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


# ------------------------------------------------------------------------------ Triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _gelu(y):
        return 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))

    @triton.jit
    def _gelu_grad(y):
        cdf = 0.5 * (1.0 + tl.erf(y * 0.7071067811865476))
        pdf = tl.exp(-0.5 * y * y) * 0.3989422804014327
        return cdf + y * pdf

    @triton.jit
    def _tile_offsets(pid, N, K: tl.constexpr, P: tl.constexpr, BN: tl.constexpr,
                      KP: tl.constexpr, PP: tl.constexpr):
        n = pid * BN + tl.arange(0, BN)
        k = tl.arange(0, KP)
        p = tl.arange(0, PP)
        offs = n[:, None, None] * (K * P) + k[None, :, None] * P + p[None, None, :]
        mask = (n[:, None, None] < N) & (k[None, :, None] < K) & (p[None, None, :] < P)
        return offs, mask

    @triton.jit
    def _load_square(W, D: tl.constexpr, DP: tl.constexpr, ACC: tl.constexpr):
        r = tl.arange(0, DP)
        m = (r[:, None] < D) & (r[None, :] < D)
        return tl.load(W + r[:, None] * D + r[None, :], mask=m, other=0.0).to(ACC)

    @triton.jit
    def _des_fwd_kernel(X, AW, AB, BW, BB, U, N, K: tl.constexpr, P: tl.constexpr,
                        BN: tl.constexpr, KP: tl.constexpr, PP: tl.constexpr,
                        GELU: tl.constexpr, ACC: tl.constexpr):
        pid = tl.program_id(0)
        offs, mask = _tile_offsets(pid, N, K, P, BN, KP, PP)
        x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)            # (BN, KP, PP)
        bw = _load_square(BW, P, PP, ACC)
        aw = _load_square(AW, K, KP, ACC)
        bb = tl.load(BB + tl.arange(0, PP), mask=tl.arange(0, PP) < P, other=0.0).to(ACC)
        ab = tl.load(AB + tl.arange(0, KP), mask=tl.arange(0, KP) < K, other=0.0).to(ACC)
        y = tl.dot(tl.reshape(x, (BN * KP, PP)), tl.trans(bw), input_precision="ieee") + bb[None, :]
        g = _gelu(y) if GELU else y
        # left factor along K: transpose each token's tile to (P, K), multiply by A^T
        gt = tl.reshape(tl.permute(tl.reshape(g, (BN, KP, PP)), (0, 2, 1)), (BN * PP, KP))
        ut = tl.dot(gt, tl.trans(aw), input_precision="ieee") + ab[None, :]     # (BN*PP, KP)
        u = tl.permute(tl.reshape(ut, (BN, PP, KP)), (0, 2, 1))                 # (BN, KP, PP)
        tl.store(U + offs, u.to(U.dtype.element_ty), mask=mask)

    @triton.jit
    def _des_bwd_kernel(X, DU, AW, BW, BB, DX, DAW, DAB, DBW, DBB, N,
                        K: tl.constexpr, P: tl.constexpr, BN: tl.constexpr, KP: tl.constexpr,
                        PP: tl.constexpr, GELU: tl.constexpr, ACC: tl.constexpr):
        pid = tl.program_id(0)
        offs, mask = _tile_offsets(pid, N, K, P, BN, KP, PP)
        x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
        du = tl.load(DU + offs, mask=mask, other=0.0).to(ACC)
        bw = _load_square(BW, P, PP, ACC)
        aw = _load_square(AW, K, KP, ACC)
        pr = tl.arange(0, PP)
        bb = tl.load(BB + pr, mask=pr < P, other=0.0).to(ACC)
        # recompute the forward's intermediates instead of storing them (saves 2 N C of traffic)
        y = tl.dot(tl.reshape(x, (BN * KP, PP)), tl.trans(bw), input_precision="ieee") + bb[None, :]
        g = _gelu(y) if GELU else y
        # padded token rows/K rows carry y = b_B != 0: zero them so they add nothing below
        valid = tl.reshape(mask, (BN * KP, PP))
        g = tl.where(valid, g, 0.0)
        dut = tl.reshape(tl.permute(du, (0, 2, 1)), (BN * PP, KP))               # (BN*PP, KP)
        gt = tl.reshape(tl.permute(tl.reshape(g, (BN, KP, PP)), (0, 2, 1)), (BN * PP, KP))
        dgt = tl.dot(dut, aw, input_precision="ieee")                            # dG^T = dU^T A
        dg = tl.reshape(tl.permute(tl.reshape(dgt, (BN, PP, KP)), (0, 2, 1)), (BN * KP, PP))
        dy = dg * _gelu_grad(y) if GELU else dg
        dy = tl.where(valid, dy, 0.0)
        dx = tl.dot(dy, bw, input_precision="ieee")                               # dX = dY B
        tl.store(DX + offs, tl.reshape(dx, (BN, KP, PP)).to(DX.dtype.element_ty), mask=mask)
        # per-program partial sums of the weight gradients
        daw = tl.dot(tl.trans(dut), gt, input_precision="ieee")                   # sum dU G^T  (KP, KP)
        dbw = tl.dot(tl.trans(dy), tl.reshape(x, (BN * KP, PP)), input_precision="ieee")  # sum dY^T X
        kr = tl.arange(0, KP)
        tl.store(DAW + pid * KP * KP + kr[:, None] * KP + kr[None, :], daw)
        tl.store(DBW + pid * PP * PP + pr[:, None] * PP + pr[None, :], dbw)
        tl.store(DAB + pid * KP + kr, tl.sum(dut, axis=0))
        tl.store(DBB + pid * PP + pr, tl.sum(dy, axis=0))


BLOCK_N = 16


def _acc(x):
    """Accumulate in fp64 for fp64 inputs (gradcheck), else fp32 (fp16/bf16 upcast on load)."""
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _launch_cfg(x, a_w, b_w):
    k, p = a_w.shape[0], b_w.shape[0]
    kp, pp = _pad(k), _pad(p)
    # keep the (BLOCK_N, KP, PP) tile around 4k elements
    bn = max(1, min(BLOCK_N, 4096 // (kp * pp)))
    bn = 1 << (bn.bit_length() - 1)
    return k, p, kp, pp, bn, triton.cdiv(x.shape[0], bn)


def des_forward_triton(x, a_w, a_b, b_w, b_b, act="gelu"):
    _check(x, a_w, a_b, b_w, b_b, act)
    x = x.contiguous()
    k, p, kp, pp, bn, grid = _launch_cfg(x, a_w, b_w)
    u = torch.empty_like(x)
    _des_fwd_kernel[(grid,)](x, a_w.contiguous(), a_b.contiguous(), b_w.contiguous(), b_b.contiguous(),
                             u, x.shape[0], K=k, P=p, BN=bn, KP=kp, PP=pp, GELU=act == "gelu",
                             ACC=_acc(x))
    return u


def des_backward_triton(x, du, a_w, b_w, b_b, act="gelu"):
    x, du = x.contiguous(), du.contiguous()
    k, p, kp, pp, bn, grid = _launch_cfg(x, a_w, b_w)
    f32 = dict(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    dx = torch.empty_like(x)
    daw, dab = torch.empty(grid, kp, kp, **f32), torch.empty(grid, kp, **f32)
    dbw, dbb = torch.empty(grid, pp, pp, **f32), torch.empty(grid, pp, **f32)
    _des_bwd_kernel[(grid,)](x, du, a_w.contiguous(), b_w.contiguous(), b_b.contiguous(), dx,
                             daw, dab, dbw, dbb, x.shape[0], K=k, P=p, BN=bn, KP=kp, PP=pp,
                             GELU=act == "gelu", ACC=_acc(x))
    cast = lambda t, like: t.to(like.dtype)
    return (dx, cast(daw.sum(0)[:k, :k], a_w), cast(dab.sum(0)[:k], a_w),
            cast(dbw.sum(0)[:p, :p], b_w), cast(dbb.sum(0)[:p], b_w))


def des_backward_reference(x, du, a_w, b_w, b_b, act="gelu"):
    """The backward equations of the module docstring, in torch (used when Triton is not)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    k, p = a_w.shape[0], b_w.shape[0]
    xm, dum = x.to(acc).reshape(-1, k, p), du.to(acc).reshape(-1, k, p)
    A, B = a_w.to(acc), b_w.to(acc)
    y = xm @ B.T + b_b.to(acc)
    if act == "gelu":
        g = F.gelu(y)
        cdf = 0.5 * (1 + torch.erf(y / math.sqrt(2)))
        dgelu = cdf + y * torch.exp(-0.5 * y * y) / math.sqrt(2 * math.pi)
    else:
        g, dgelu = y, torch.ones_like(y)
    dy = (A.T @ dum) * dgelu
    return ((dy @ B).reshape(x.shape).to(x.dtype), (dum @ g.transpose(1, 2)).sum(0).to(a_w.dtype),
            dum.sum((0, 2)).to(a_w.dtype), (dy.transpose(1, 2) @ xm).sum(0).to(b_w.dtype),
            dy.sum((0, 1)).to(b_w.dtype))


# ------------------------------------------------------------------------------ custom op
@torch.library.custom_op("hrvit_edu::des", mutates_args=())
def des(x: torch.Tensor, a_w: torch.Tensor, a_b: torch.Tensor, b_w: torch.Tensor,
        b_b: torch.Tensor, act: str = "gelu") -> torch.Tensor:
    """Fused DES on tokens (N, C): the Triton kernel when usable, else :func:`des_reference`."""
    if triton_usable(x, a_w) and (x.is_cuda or x.dtype != torch.bfloat16):
        return des_forward_triton(x, a_w, a_b, b_w, b_b, act)
    return des_reference(x, a_w, a_b, b_w, b_b, act)


@des.register_fake
def _(x, a_w, a_b, b_w, b_b, act="gelu"):
    _check(x, a_w, a_b, b_w, b_b, act)
    return torch.empty_like(x)


@torch.library.custom_op("hrvit_edu::des_backward", mutates_args=())
def des_backward(x: torch.Tensor, du: torch.Tensor, a_w: torch.Tensor, b_w: torch.Tensor,
                 b_b: torch.Tensor, act: str = "gelu") -> list[torch.Tensor]:
    require_float("des_backward", x=x, du=du)
    if du.shape != x.shape:
        raise ValueError(f"des_backward: du {tuple(du.shape)} must have the shape of x {tuple(x.shape)}")
    if triton_usable(x, a_w) and (x.dtype != torch.bfloat16 or x.is_cuda):
        return list(des_backward_triton(x, du, a_w, b_w, b_b, act))
    return list(des_backward_reference(x, du, a_w, b_w, b_b, act))


@des_backward.register_fake
def _(x, du, a_w, b_w, b_b, act="gelu"):
    k, p = a_w.shape[0], b_w.shape[0]
    return [torch.empty_like(x), a_w.new_empty(k, k), a_w.new_empty(k), b_w.new_empty(p, p), b_w.new_empty(p)]


def _setup_context(ctx, inputs, output):
    x, a_w, a_b, b_w, b_b, act = inputs
    ctx.save_for_backward(x, a_w, b_w, b_b)
    ctx.act = act


def _backward(ctx, du):
    x, a_w, b_w, b_b = ctx.saved_tensors
    dx, daw, dab, dbw, dbb = des_backward(x, du.contiguous(), a_w, b_w, b_b, ctx.act)
    return dx, daw, dab, dbw, dbb, None


des.register_autograd(_backward, setup_context=_setup_context)
