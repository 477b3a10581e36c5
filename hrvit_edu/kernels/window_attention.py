"""Attention inside windows with a key-padding mask: HRViT's cross-shaped stripes (and, later,
TransNeXt's length-scaled cosine attention) reduce to this operator.

For a window g with queries Q_g, keys K_g, values V_g (L x d each) of which the first
n_g keys are real and the rest are zero padding:

    S = alpha * Q_g K_g^T + M_g,   M_g[i, j] = 0 if j < n_g else mask_value        (ch. 01, eq. 1.6)
    O_g = softmax_rows(S) V_g                                                     (eq. 1.6)

The official HRViT code adds ``mask_value = -100`` (not -inf), so a padded key keeps a weight
of about e^-100 relative to the real ones; ``-inf`` removes it exactly.  Padded *queries* are
computed too and discarded by the caller.

Shapes: q, k, v (G, L, d) with G = batch * windows * heads; valid (G,) int64.
"""
from __future__ import annotations

import torch

from ._runtime import require_float


def window_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               valid: torch.Tensor, scale: float,
                               mask_value: float = -100.0) -> torch.Tensor:
    """eq. (1.6) with torch ops; fp16/bf16 inputs computed in fp32."""
    _check(q, k, v, valid)
    s = masked_scores(q, k, valid, scale, mask_value)
    return torch.matmul(torch.softmax(s, -1), v.to(s.dtype)).to(q.dtype)


def masked_scores(q, k, valid, scale, mask_value):
    """eq. (1.6): S = alpha Q K^T + M in fp32 (fp64 for fp64 inputs)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = scale * torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2))
    pad = torch.arange(k.shape[1], device=k.device)[None, None, :] >= valid[:, None, None]
    if mask_value == float("-inf"):
        return s.masked_fill(pad, float("-inf"))
    return s + pad.to(acc) * mask_value


def _check(q, k, v, valid):
    """The one input check of window attention, shared by the Triton and the reference path."""
    require_float("window_attention", q=q, k=k, v=v)
    if not isinstance(valid, torch.Tensor):
        raise TypeError(f"window_attention: valid must be an int tensor, got {type(valid).__name__}")
    if q.ndim != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be (G, L, d); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if valid.shape != (q.shape[0],) or valid.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"valid must be an int tensor of shape ({q.shape[0]},), got "
                         f"{tuple(valid.shape)} {valid.dtype}")
    if valid.device != q.device:
        raise ValueError(f"window_attention: valid is on {valid.device} but q on {q.device}")


# ------------------------------------------------------------------------------ Triton
# Flash-style: a program owns BLOCK_M queries of one window-head g and streams its keys in
# blocks of BLOCK_N, keeping the running max m, normaliser l and output accumulator on chip
# (online softmax), so the L x L score matrix never reaches memory.  The forward also stores
# the log-sum-exp per query; the backward recomputes P = exp(S - lse) from it:
#
#     D_i = sum_c dO_ic O_ic,   dP = dO V^T,   dS = P * (dP - D),
#     dV = P^T dO,   dK = alpha dS^T Q,   dQ = alpha dS K                          (eq. 1.16)
#
# ``scale`` is a per-window-head tensor (G,), so a later chapter can pass a length-dependent
# scale (TransNeXt's length-scaled cosine attention) through the same kernels.
from ._runtime import HAS_TRITON, register_kernel_module, triton_usable  # noqa: E402

register_kernel_module(__name__)

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _load_tile(PTR, base, idx, dd, L, D, ACC: tl.constexpr):
        """Rows ``idx`` (< L) x head dims ``dd`` (< D) of one window-head, zero elsewhere."""
        m = (idx[:, None] < L) & (dd[None, :] < D)
        return tl.load(PTR + base + idx[:, None] * D + dd[None, :], mask=m, other=0.0).to(ACC)

    @triton.jit
    def _scores(q, k, scale, valid, cols, L, MASK_VALUE: tl.constexpr, MASK_NEG_INF: tl.constexpr):
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        pad_key = cols[None, :] >= valid            # real tokens come first in every window
        if MASK_NEG_INF:
            s = tl.where(pad_key, float("-inf"), s)
        else:
            s = tl.where(pad_key, s + MASK_VALUE, s)
        return tl.where(cols[None, :] < L, s, float("-inf"))   # beyond the window: not a key

    @triton.jit
    def _wattn_fwd(Q, K, V, O, LSE, SCALE, VALID, L, D,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DP: tl.constexpr,
                   MASK_VALUE: tl.constexpr, MASK_NEG_INF: tl.constexpr, ACC: tl.constexpr):
        pid_m, g = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dd = tl.arange(0, DP)
        base = g * L * D
        rmask = (rows[:, None] < L) & (dd[None, :] < D)
        q = _load_tile(Q, base, rows, dd, L, D, ACC)
        scale = tl.load(SCALE + g).to(ACC)
        valid = tl.load(VALID + g)
        m = tl.full((BLOCK_M,), float("-inf"), ACC)
        l = tl.zeros((BLOCK_M,), ACC)
        acc = tl.zeros((BLOCK_M, DP), ACC)
        for start in range(0, L, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            k = _load_tile(K, base, cols, dd, L, D, ACC)
            v = _load_tile(V, base, cols, dd, L, D, ACC)
            s = _scores(q, k, scale, valid, cols, L, MASK_VALUE, MASK_NEG_INF)
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            l = l * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(ACC), v, input_precision="ieee")
            m = m_new
        o = acc / l[:, None]
        tl.store(O + base + rows[:, None] * D + dd[None, :], o.to(O.dtype.element_ty), mask=rmask)
        tl.store(LSE + g * L + rows, m + tl.log(l), mask=rows < L)

    @triton.jit
    def _wattn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, SCALE, VALID, DK, DV, L, D,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DP: tl.constexpr,
                        MASK_VALUE: tl.constexpr, MASK_NEG_INF: tl.constexpr, ACC: tl.constexpr):
        pid_n, g = tl.program_id(0), tl.program_id(1)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        dd = tl.arange(0, DP)
        base = g * L * D
        cmask = (cols[:, None] < L) & (dd[None, :] < D)
        k = _load_tile(K, base, cols, dd, L, D, ACC)
        v = _load_tile(V, base, cols, dd, L, D, ACC)
        scale = tl.load(SCALE + g).to(ACC)
        valid = tl.load(VALID + g)
        dk = tl.zeros((BLOCK_N, DP), ACC)
        dv = tl.zeros((BLOCK_N, DP), ACC)
        for start in range(0, L, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            q = _load_tile(Q, base, rows, dd, L, D, ACC)
            do = _load_tile(DO, base, rows, dd, L, D, ACC)
            lse = tl.load(LSE + g * L + rows, mask=rows < L, other=0.0)
            delta = tl.load(DELTA + g * L + rows, mask=rows < L, other=0.0)
            s = _scores(q, k, scale, valid, cols, L, MASK_VALUE, MASK_NEG_INF)
            p = tl.exp(s - lse[:, None])
            p = tl.where(rows[:, None] < L, p, 0.0)            # padded query rows add nothing
            dv += tl.dot(tl.trans(p), do, input_precision="ieee")
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds), q, input_precision="ieee") * scale
        tl.store(DK + base + cols[:, None] * D + dd[None, :], dk.to(DK.dtype.element_ty), mask=cmask)
        tl.store(DV + base + cols[:, None] * D + dd[None, :], dv.to(DV.dtype.element_ty), mask=cmask)

    @triton.jit
    def _wattn_bwd_dq(Q, K, V, DO, LSE, DELTA, SCALE, VALID, DQ, L, D,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DP: tl.constexpr,
                      MASK_VALUE: tl.constexpr, MASK_NEG_INF: tl.constexpr, ACC: tl.constexpr):
        pid_m, g = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dd = tl.arange(0, DP)
        base = g * L * D
        rmask = (rows[:, None] < L) & (dd[None, :] < D)
        q = _load_tile(Q, base, rows, dd, L, D, ACC)
        do = _load_tile(DO, base, rows, dd, L, D, ACC)
        lse = tl.load(LSE + g * L + rows, mask=rows < L, other=0.0)
        delta = tl.load(DELTA + g * L + rows, mask=rows < L, other=0.0)
        scale = tl.load(SCALE + g).to(ACC)
        valid = tl.load(VALID + g)
        dq = tl.zeros((BLOCK_M, DP), ACC)
        for start in range(0, L, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            k = _load_tile(K, base, cols, dd, L, D, ACC)
            v = _load_tile(V, base, cols, dd, L, D, ACC)
            s = _scores(q, k, scale, valid, cols, L, MASK_VALUE, MASK_NEG_INF)
            p = tl.exp(s - lse[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds, k, input_precision="ieee") * scale
        tl.store(DQ + base + rows[:, None] * D + dd[None, :], dq.to(DQ.dtype.element_ty), mask=rmask)


BLOCK = 16      # queries/keys per tile; windows are short (s * W tokens)


def _acc(x):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _meta(q, mask_value):
    neg_inf = mask_value == float("-inf")
    return dict(BLOCK_M=BLOCK, BLOCK_N=BLOCK, DP=max(16, triton.next_power_of_2(q.shape[2])),
                MASK_VALUE=0.0 if neg_inf else float(mask_value), MASK_NEG_INF=neg_inf, ACC=_acc(q))


def _lse_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def window_attention_forward_triton(q, k, v, valid, scale, mask_value=-100.0):
    """Returns (O, lse).  ``scale`` is a float or a (G,) tensor."""
    _check(q, k, v, valid)
    g, n, d = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    scale_t = torch.as_tensor(scale, dtype=_lse_dtype(q), device=q.device).expand(g).contiguous()
    o = torch.empty_like(q)
    lse = torch.empty(g, n, dtype=_lse_dtype(q), device=q.device)
    _wattn_fwd[(triton.cdiv(n, BLOCK), g)](q, k, v, o, lse, scale_t, valid.contiguous(), n, d,
                                           **_meta(q, mask_value))
    return o, lse


def window_attention_backward_triton(q, k, v, o, lse, do, valid, scale, mask_value=-100.0):
    g, n, d = q.shape
    q, k, v, o, do = (t.contiguous() for t in (q, k, v, o, do))
    scale_t = torch.as_tensor(scale, dtype=lse.dtype, device=q.device).expand(g).contiguous()
    delta = (do.to(lse.dtype) * o.to(lse.dtype)).sum(-1)          # D_i, eq. (1.16)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    meta = _meta(q, mask_value)
    grid = (triton.cdiv(n, BLOCK), g)
    _wattn_bwd_dkdv[grid](q, k, v, do, lse, delta, scale_t, valid.contiguous(), dk, dv, n, d, **meta)
    _wattn_bwd_dq[grid](q, k, v, do, lse, delta, scale_t, valid.contiguous(), dq, n, d, **meta)
    return dq, dk, dv


# ------------------------------------------------------------------------------ custom op
def _use_triton(q):
    return triton_usable(q) and (q.is_cuda or q.dtype != torch.bfloat16)


@torch.library.custom_op("hrvit_edu::window_attention", mutates_args=())
def window_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
                        scale: float, mask_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, lse) of eq. (1.6); lse is what the backward needs."""
    _check(q, k, v, valid)
    if _use_triton(q):
        return window_attention_forward_triton(q, k, v, valid, scale, mask_value)
    s = masked_scores(q, k, valid, scale, mask_value)
    lse = torch.logsumexp(s, -1)
    return torch.matmul(torch.exp(s - lse[..., None]), v.to(s.dtype)).to(q.dtype), lse


@window_attention_op.register_fake
def _(q, k, v, valid, scale, mask_value):
    _check(q, k, v, valid)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=acc)


@torch.library.custom_op("hrvit_edu::window_attention_backward", mutates_args=())
def window_attention_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                                 lse: torch.Tensor, do: torch.Tensor, valid: torch.Tensor,
                                 scale: float, mask_value: float) -> list[torch.Tensor]:
    _check(q, k, v, valid)
    require_float("window_attention_backward", q=q, o=o, do=do)
    if o.shape != q.shape or do.shape != q.shape:
        raise ValueError("window_attention_backward: o and do must have the shape of q")
    if _use_triton(q):
        return list(window_attention_backward_triton(q, k, v, o, lse, do, valid, scale, mask_value))
    acc = lse.dtype
    qf, kf, vf, of, dof = (t.to(acc) for t in (q, k, v, o, do))
    p = torch.exp(masked_scores(q, k, valid, scale, mask_value) - lse[..., None])
    ds = p * (dof @ vf.transpose(-1, -2) - (dof * of).sum(-1, keepdim=True))
    return [(scale * ds @ kf).to(q.dtype), (scale * ds.transpose(-1, -2) @ qf).to(k.dtype),
            (p.transpose(-1, -2) @ dof).to(v.dtype)]


@window_attention_backward_op.register_fake
def _(q, k, v, o, lse, do, valid, scale, mask_value):
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)]


def _setup_context(ctx, inputs, output):
    q, k, v, valid, scale, mask_value = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse, valid)
    ctx.scale, ctx.mask_value = scale, mask_value


def _backward(ctx, do, dlse):
    q, k, v, o, lse, valid = ctx.saved_tensors
    dq, dk, dv = window_attention_backward_op(q, k, v, o, lse, do.contiguous(), valid,
                                              ctx.scale, ctx.mask_value)
    return dq, dk, dv, None, None, None


window_attention_op.register_autograd(_backward, setup_context=_setup_context)


def window_attention(q, k, v, valid, scale: float, mask_value: float = -100.0) -> torch.Tensor:
    """eq. (1.6) through the fused op (Triton when usable; autograd and compile aware)."""
    return window_attention_op(q, k, v, valid, float(scale), float(mask_value))[0]
