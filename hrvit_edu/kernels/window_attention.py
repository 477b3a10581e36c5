"""Attention inside windows with a key-padding mask: HRViT's cross-shaped stripes and TransNeXt's
length-scaled cosine attention (chapter 02) reduce to this operator.

For a window g with queries Q_g, keys K_g, values V_g (L x d each) of which the first
n_g keys are real and the rest are zero padding:

    S = alpha * Q_g K_g^T + M_g,   M_g[i, j] = 0 if j < n_g else mask_value        (ch. 01, eq. 1.6)
    O_g = softmax_rows(S) V_g                                                     (eq. 1.6)

The official HRViT code adds ``mask_value = -100`` (not -inf), so a padded key keeps a weight
of about e^-100 relative to the real ones; ``-inf`` removes it exactly.  Padded *queries* are
computed too and discarded by the caller.

Shapes: q, k, v (G, L, d) with G = batch * windows * heads; valid (G,) int64.

Chapter 02 extends it (same kernels, two switches): the scale may differ per query,
``alpha -> lam (G, L)``, and learn (its gradient is returned), and an additive bias B (n_B, L, L),
shared by every g with the same g mod n_B (the heads), may join the scores:

    S[g, i, j] = lam[g, i] * (q_gi . k_gj) + B[g mod n_B, i, j] + M_g[i, j]                    (2.9)
"""
from __future__ import annotations

import torch

from ._runtime import require_float


def window_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               valid: torch.Tensor, scale, mask_value: float = -100.0,
                               bias: torch.Tensor | None = None) -> torch.Tensor:
    """eq. (1.6) (or (2.9) with a (G, L) ``scale`` and a ``bias``) with torch ops; fp16/bf16
    inputs computed in fp32."""
    _check(q, k, v, valid, scale, bias)
    s = masked_scores(q, k, valid, scale, mask_value, bias)
    return torch.matmul(torch.softmax(s, -1), v.to(s.dtype)).to(q.dtype)


def masked_scores(q, k, valid, scale, mask_value, bias=None):
    """eq. (1.6)/(2.9): S = lam * Q K^T + B + M in fp32 (fp64 for fp64 inputs)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2))
    s = s * (scale.to(acc)[..., None] if isinstance(scale, torch.Tensor) else scale)
    if bias is not None:
        g, n = q.shape[:2]
        s = (s.view(g // bias.shape[0], bias.shape[0], n, n) + bias.to(acc)).view(g, n, n)
    pad = torch.arange(k.shape[1], device=k.device)[None, None, :] >= valid[:, None, None]
    if mask_value == float("-inf"):
        return s.masked_fill(pad, float("-inf"))
    return s + pad.to(acc) * mask_value


def _check(q, k, v, valid, scale=None, bias=None):
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
    g, n = q.shape[:2]
    if isinstance(scale, torch.Tensor):
        if scale.shape not in ((), (g,), (g, n)) or not scale.is_floating_point() or scale.device != q.device:
            raise ValueError(f"window_attention: a tensor scale must be a float tensor of shape (), ({g},) "
                             f"or ({g}, {n}) on {q.device}; got {tuple(scale.shape)} {scale.dtype} {scale.device}")
    if bias is not None:
        if (not isinstance(bias, torch.Tensor) or bias.ndim != 3 or bias.shape[1:] != (n, n)
                or g % bias.shape[0] or not bias.is_floating_point() or bias.device != q.device):
            raise ValueError(f"window_attention: bias must be a float tensor (n_B, {n}, {n}) on {q.device} "
                             f"with n_B dividing G = {g}; got {getattr(bias, 'shape', type(bias))}")


# ------------------------------------------------------------------------------ Triton
# Flash-style: a program owns BLOCK_M queries of one window-head g and streams its keys in
# blocks of BLOCK_N, keeping the running max m, normaliser l and output accumulator on chip
# (online softmax), so the L x L score matrix never reaches memory.  The forward also stores
# the log-sum-exp per query; the backward recomputes P = exp(S - lse) from it:
#
#     D_i = sum_c dO_ic O_ic,   dP = dO V^T,   dS = P * (dP - D),
#     dV = P^T dO,   dK = alpha dS^T Q,   dQ = alpha dS K                          (eq. 1.16)
#
# Chapter 02's extension: the scale is read per query row (``SCALE + g SSG + i SSL``: strides 0
# make a scalar, (1, 0) a per-window (G,) and (L, 1) a per-query (G, L) scale), the bias tile
# B[g mod n_B] is added when ``HAS_BIAS``, and the dq kernel also returns d lam.  With a row scale
# lam_i, S_ij = lam_i C_ij (C = Q K^T), so
#
#     dQ_i = lam_i sum_j dS_ij K_j,   dK_j = sum_i lam_i dS_ij Q_i,
#     d lam_i = sum_j dS_ij C_ij,     dB[h] = sum_{g: g mod n_B = h} dS_g                 (2.10)
#
# and dB gets a third kernel that owns one (h, query tile, key tile) and loops over the batch,
# so no two programs write the same element: no atomics, deterministic.
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
    def _row_scale(SCALE, g, rows, L, SSG, SSL):
        """lam for the query rows of window-head g (strides pick scalar / (G,) / (G, L))."""
        return tl.load(SCALE + g * SSG + rows * SSL, mask=rows < L, other=0.0)

    @triton.jit
    def _scores(q, k, scale, valid, rows, cols, L, BIAS, hb, MASK_VALUE: tl.constexpr,
                MASK_NEG_INF: tl.constexpr, HAS_BIAS: tl.constexpr):
        """(C, S): raw dot products and the masked scores of eq. (2.9) for one tile."""
        c = tl.dot(q, tl.trans(k), input_precision="ieee")
        s = c * scale[:, None]
        if HAS_BIAS:
            bmask = (rows[:, None] < L) & (cols[None, :] < L)
            s += tl.load(BIAS + hb * L * L + rows[:, None] * L + cols[None, :], mask=bmask, other=0.0).to(s.dtype)
        pad_key = cols[None, :] >= valid            # real tokens come first in every window
        if MASK_NEG_INF:
            s = tl.where(pad_key, float("-inf"), s)
        else:
            s = tl.where(pad_key, s + MASK_VALUE, s)
        return c, tl.where(cols[None, :] < L, s, float("-inf"))   # beyond the window: not a key

    @triton.jit
    def _wattn_fwd(Q, K, V, O, LSE, SCALE, SSG, SSL, BIAS, NB, VALID, L, D,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DP: tl.constexpr,
                   MASK_VALUE: tl.constexpr, MASK_NEG_INF: tl.constexpr, HAS_BIAS: tl.constexpr,
                   ACC: tl.constexpr):
        pid_m, g = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dd = tl.arange(0, DP)
        base = g * L * D
        rmask = (rows[:, None] < L) & (dd[None, :] < D)
        q = _load_tile(Q, base, rows, dd, L, D, ACC)
        scale = _row_scale(SCALE, g, rows, L, SSG, SSL).to(ACC)
        valid = tl.load(VALID + g)
        m = tl.full((BLOCK_M,), float("-inf"), ACC)
        l = tl.zeros((BLOCK_M,), ACC)
        acc = tl.zeros((BLOCK_M, DP), ACC)
        for start in range(0, L, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            k = _load_tile(K, base, cols, dd, L, D, ACC)
            v = _load_tile(V, base, cols, dd, L, D, ACC)
            _, s = _scores(q, k, scale, valid, rows, cols, L, BIAS, g % NB, MASK_VALUE, MASK_NEG_INF,
                           HAS_BIAS)
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
    def _wattn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, SCALE, SSG, SSL, BIAS, NB, VALID, DK, DV, L, D,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DP: tl.constexpr,
                        MASK_VALUE: tl.constexpr, MASK_NEG_INF: tl.constexpr, HAS_BIAS: tl.constexpr,
                        ACC: tl.constexpr):
        pid_n, g = tl.program_id(0), tl.program_id(1)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        dd = tl.arange(0, DP)
        base = g * L * D
        cmask = (cols[:, None] < L) & (dd[None, :] < D)
        k = _load_tile(K, base, cols, dd, L, D, ACC)
        v = _load_tile(V, base, cols, dd, L, D, ACC)
        valid = tl.load(VALID + g)
        dk = tl.zeros((BLOCK_N, DP), ACC)
        dv = tl.zeros((BLOCK_N, DP), ACC)
        for start in range(0, L, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            q = _load_tile(Q, base, rows, dd, L, D, ACC)
            do = _load_tile(DO, base, rows, dd, L, D, ACC)
            lse = tl.load(LSE + g * L + rows, mask=rows < L, other=0.0)
            delta = tl.load(DELTA + g * L + rows, mask=rows < L, other=0.0)
            scale = _row_scale(SCALE, g, rows, L, SSG, SSL).to(ACC)
            _, s = _scores(q, k, scale, valid, rows, cols, L, BIAS, g % NB, MASK_VALUE, MASK_NEG_INF,
                           HAS_BIAS)
            p = tl.exp(s - lse[:, None])
            p = tl.where(rows[:, None] < L, p, 0.0)            # padded query rows add nothing
            dv += tl.dot(tl.trans(p), do, input_precision="ieee")
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds * scale[:, None]), q, input_precision="ieee")
        tl.store(DK + base + cols[:, None] * D + dd[None, :], dk.to(DK.dtype.element_ty), mask=cmask)
        tl.store(DV + base + cols[:, None] * D + dd[None, :], dv.to(DV.dtype.element_ty), mask=cmask)

    @triton.jit
    def _wattn_bwd_dq(Q, K, V, DO, LSE, DELTA, SCALE, SSG, SSL, BIAS, NB, VALID, DQ, DSCALE, L, D,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DP: tl.constexpr,
                      MASK_VALUE: tl.constexpr, MASK_NEG_INF: tl.constexpr, HAS_BIAS: tl.constexpr,
                      NEED_DSCALE: tl.constexpr, ACC: tl.constexpr):
        pid_m, g = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dd = tl.arange(0, DP)
        base = g * L * D
        rmask = (rows[:, None] < L) & (dd[None, :] < D)
        q = _load_tile(Q, base, rows, dd, L, D, ACC)
        do = _load_tile(DO, base, rows, dd, L, D, ACC)
        lse = tl.load(LSE + g * L + rows, mask=rows < L, other=0.0)
        delta = tl.load(DELTA + g * L + rows, mask=rows < L, other=0.0)
        scale = _row_scale(SCALE, g, rows, L, SSG, SSL).to(ACC)
        valid = tl.load(VALID + g)
        dq = tl.zeros((BLOCK_M, DP), ACC)
        dscale = tl.zeros((BLOCK_M,), ACC)
        for start in range(0, L, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            k = _load_tile(K, base, cols, dd, L, D, ACC)
            v = _load_tile(V, base, cols, dd, L, D, ACC)
            c, s = _scores(q, k, scale, valid, rows, cols, L, BIAS, g % NB, MASK_VALUE, MASK_NEG_INF,
                           HAS_BIAS)
            p = tl.exp(s - lse[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds, k, input_precision="ieee")
            if NEED_DSCALE:
                dscale += tl.sum(tl.where(cols[None, :] < L, ds * c, 0.0), axis=1)
        dq = dq * scale[:, None]
        tl.store(DQ + base + rows[:, None] * D + dd[None, :], dq.to(DQ.dtype.element_ty), mask=rmask)
        if NEED_DSCALE:
            tl.store(DSCALE + g * L + rows, dscale, mask=rows < L)

    @triton.jit
    def _wattn_bwd_dbias(Q, K, V, DO, LSE, DELTA, SCALE, SSG, SSL, BIAS, NB, VALID, DBIAS, L, D, G,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DP: tl.constexpr,
                         MASK_VALUE: tl.constexpr, MASK_NEG_INF: tl.constexpr, ACC: tl.constexpr):
        """dB[h] tile = sum over the g with g mod n_B = h of dS_g (eq. 2.10): recomputed, no atomics."""
        pid_m, pid_n, hb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        dd = tl.arange(0, DP)
        db = tl.zeros((BLOCK_M, BLOCK_N), ACC)
        for g in range(hb, G, NB):
            base = g * L * D
            q = _load_tile(Q, base, rows, dd, L, D, ACC)
            do = _load_tile(DO, base, rows, dd, L, D, ACC)
            k = _load_tile(K, base, cols, dd, L, D, ACC)
            v = _load_tile(V, base, cols, dd, L, D, ACC)
            lse = tl.load(LSE + g * L + rows, mask=rows < L, other=0.0)
            delta = tl.load(DELTA + g * L + rows, mask=rows < L, other=0.0)
            scale = _row_scale(SCALE, g, rows, L, SSG, SSL).to(ACC)
            _, s = _scores(q, k, scale, tl.load(VALID + g), rows, cols, L, BIAS, hb, MASK_VALUE,
                           MASK_NEG_INF, True)
            p = tl.exp(s - lse[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            db += p * (dp - delta[:, None])
        bmask = (rows[:, None] < L) & (cols[None, :] < L)
        tl.store(DBIAS + hb * L * L + rows[:, None] * L + cols[None, :], db, mask=bmask)


BLOCK = 16      # queries/keys per tile; windows are short (s * W tokens)


def _acc(x):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _meta(q, mask_value):
    neg_inf = mask_value == float("-inf")
    return dict(BLOCK_M=BLOCK, BLOCK_N=BLOCK, DP=max(16, triton.next_power_of_2(q.shape[2])),
                MASK_VALUE=0.0 if neg_inf else float(mask_value), MASK_NEG_INF=neg_inf, ACC=_acc(q))


def _lse_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _scale_args(scale, q):
    """(tensor, SSG, SSL): a float, (G,) or (G, L) scale as a pointer plus two strides."""
    g, n = q.shape[:2]
    t = torch.as_tensor(scale, dtype=_lse_dtype(q), device=q.device).contiguous()
    if t.ndim == 0:
        return t.reshape(1), 0, 0
    return t, (1 if t.ndim == 1 else n), (0 if t.ndim == 1 else 1)


def _bias_args(bias, q):
    return (q, 1, False) if bias is None else (bias.contiguous(), bias.shape[0], True)


def window_attention_forward_triton(q, k, v, valid, scale, mask_value=-100.0, bias=None):
    """Returns (O, lse).  ``scale`` is a float, a (G,) or a (G, L) tensor; ``bias`` (n_B, L, L)."""
    _check(q, k, v, valid, scale, bias)
    g, n, d = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    sc, ssg, ssl = _scale_args(scale, q)
    b, nb, has_bias = _bias_args(bias, q)
    o = torch.empty_like(q)
    lse = torch.empty(g, n, dtype=_lse_dtype(q), device=q.device)
    _wattn_fwd[(triton.cdiv(n, BLOCK), g)](q, k, v, o, lse, sc, ssg, ssl, b, nb, valid.contiguous(), n, d,
                                           HAS_BIAS=has_bias, **_meta(q, mask_value))
    return o, lse


def window_attention_backward_triton(q, k, v, o, lse, do, valid, scale, mask_value=-100.0, bias=None,
                                     need_dscale=False):
    """(dQ, dK, dV, d lam or None, dB or None) of eq. (1.16)/(2.10)."""
    g, n, d = q.shape
    q, k, v, o, do = (t.contiguous() for t in (q, k, v, o, do))
    sc, ssg, ssl = _scale_args(scale, q)
    b, nb, has_bias = _bias_args(bias, q)
    delta = (do.to(lse.dtype) * o.to(lse.dtype)).sum(-1)          # D_i, eq. (1.16)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dscale = torch.empty(g, n, dtype=lse.dtype, device=q.device) if need_dscale else lse
    meta = _meta(q, mask_value)
    grid = (triton.cdiv(n, BLOCK), g)
    args = (q, k, v, do, lse, delta, sc, ssg, ssl, b, nb, valid.contiguous())
    _wattn_bwd_dkdv[grid](*args, dk, dv, n, d, HAS_BIAS=has_bias, **meta)
    _wattn_bwd_dq[grid](*args, dq, dscale, n, d, HAS_BIAS=has_bias, NEED_DSCALE=need_dscale, **meta)
    dbias = None
    if has_bias:
        dbias = torch.empty(nb, n, n, dtype=lse.dtype, device=q.device)
        _wattn_bwd_dbias[(triton.cdiv(n, BLOCK), triton.cdiv(n, BLOCK), nb)](*args, dbias, n, d, g, **meta)
        dbias = dbias.to(bias.dtype)
    return dq, dk, dv, (dscale if need_dscale else None), dbias


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
        return list(window_attention_backward_triton(q, k, v, o, lse, do, valid, scale, mask_value)[:3])
    return list(_scores_backward_reference(q, k, v, o, lse, do, valid, scale, mask_value)[:3])


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


# ------------------------------------------------------------------------------ custom op, eq. (2.9)
# Chapter 02's form: a learnable per-query scale lam (G, L) and an optional additive bias
# (n_B, L, L).  Masked keys use -inf (the scores then need no mask value).
def _scores_backward_reference(q, k, v, o, lse, do, valid, scale, mask_value, bias=None):
    """eqs. (1.16) and (2.10) in torch: (dQ, dK, dV, d lam, dB); d lam is None for a float scale,
    dB None without a bias."""
    acc = lse.dtype
    qf, kf, vf, of, dof = (t.to(acc) for t in (q, k, v, o, do))
    c = qf @ kf.transpose(-1, -2)
    p = torch.exp(masked_scores(q, k, valid, scale, mask_value, bias) - lse[..., None])
    ds = p * (dof @ vf.transpose(-1, -2) - (dof * of).sum(-1, keepdim=True))
    tensor_scale = isinstance(scale, torch.Tensor)
    lam = scale.to(acc)[..., None] if tensor_scale else scale
    dlam = (ds * c).sum(-1).to(scale.dtype) if tensor_scale else None
    dbias = None
    if bias is not None:
        g, n = q.shape[:2]
        dbias = ds.view(g // bias.shape[0], bias.shape[0], n, n).sum(0).to(bias.dtype)
    return ((lam * ds) @ kf).to(q.dtype), ((lam * ds).transpose(-1, -2) @ qf).to(k.dtype), \
        (p.transpose(-1, -2) @ dof).to(v.dtype), dlam, dbias


def _check_scaled(q, k, v, valid, scale, bias):
    _check(q, k, v, valid, scale, bias)
    if scale.shape != q.shape[:2]:
        raise ValueError(f"scaled_window_attention: scale must be (G, L) = {tuple(q.shape[:2])}, "
                         f"got {tuple(scale.shape)}")


@torch.library.custom_op("hrvit_edu::scaled_window_attention", mutates_args=())
def scaled_window_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
                               scale: torch.Tensor, bias: torch.Tensor | None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, lse) of eq. (2.9) with -inf masking."""
    _check_scaled(q, k, v, valid, scale, bias)
    if _use_triton(q):
        return window_attention_forward_triton(q, k, v, valid, scale, float("-inf"), bias)
    s = masked_scores(q, k, valid, scale, float("-inf"), bias)
    lse = torch.logsumexp(s, -1)
    return torch.matmul(torch.exp(s - lse[..., None]), v.to(s.dtype)).to(q.dtype), lse


@scaled_window_attention_op.register_fake
def _(q, k, v, valid, scale, bias):
    _check_scaled(q, k, v, valid, scale, bias)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=acc)


@torch.library.custom_op("hrvit_edu::scaled_window_attention_backward", mutates_args=())
def scaled_window_attention_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                                        lse: torch.Tensor, do: torch.Tensor, valid: torch.Tensor,
                                        scale: torch.Tensor, bias: torch.Tensor | None) -> list[torch.Tensor]:
    """[dQ, dK, dV, d lam, dB] (dB empty when there is no bias)."""
    if _use_triton(q):
        out = window_attention_backward_triton(q, k, v, o, lse, do, valid, scale, float("-inf"), bias,
                                               need_dscale=True)
        dscale = out[3].to(scale.dtype)
    else:
        out = _scores_backward_reference(q, k, v, o, lse, do, valid, scale, float("-inf"), bias)
        dscale = out[3]
    return [out[0], out[1], out[2], dscale, q.new_empty(0) if bias is None else out[4]]


@scaled_window_attention_backward_op.register_fake
def _(q, k, v, o, lse, do, valid, scale, bias):
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(scale),
            q.new_empty(0) if bias is None else torch.empty_like(bias)]


def _setup_scaled(ctx, inputs, output):
    q, k, v, valid, scale, bias = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse, valid, scale, bias)


def _backward_scaled(ctx, do, dlse):
    q, k, v, o, lse, valid, scale, bias = ctx.saved_tensors
    dq, dk, dv, dscale, dbias = scaled_window_attention_backward_op(q, k, v, o, lse, do.contiguous(), valid,
                                                                    scale, bias)
    return dq, dk, dv, None, dscale, (None if bias is None else dbias)


scaled_window_attention_op.register_autograd(_backward_scaled, setup_context=_setup_scaled)


def scaled_window_attention(q, k, v, valid, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """eq. (2.9) through the fused op: per-query learnable scale (G, L), optional bias (n_B, L, L)."""
    return scaled_window_attention_op(q, k, v, valid, scale, bias)[0]
