"""TransNeXt's aggregated attention: pixel-focused attention (a k x k window around every query
plus P pooled keys, one softmax) with length-scaled cosine logits and positional attention.

For one head, query i at (r, c) of an H x W map, window size k (odd), window slot
z = a1 k + a2 holding the neighbour rho_z(i) = (r + a1 - k//2, c + a2 - k//2), pooled keys
m = 1..P (L2-normalised q^, k^, k^p; ``e`` the query embedding, ``tau`` > 0 per head):

    N_i   = #{z : rho_z(i) on the map} + P                  (9, 6 or 4 window keys + P)   (2.4)
    q~_i  = (q^_i + e) tau ln N_i                                                          (2.5)
    l_iz  = q~_i . k^_{rho_z(i)} + b_z   on the map,  -inf off it;
    l_im  = q~_i . k^p_m + B_im                                                            (2.6)
    [a_i. ; a^p_i.] = softmax over all (z, m) of [l_i. ; l^p_i.]
    o_i   = sum_z (a_iz + q^_i . T_z + beta_z) v_{rho_z(i)} + sum_m a^p_im v^p_m             (2.7)

(the positional-attention term q^.T + beta is added *after* the softmax, with the plain q^, as
in the official code).  Shapes: q, k, v (B, h, L = H W, d); kp, vp (B, h, P, d); qe (h, d);
tau (h,); b_loc (h, k^2); b_pool (h, L, P); tokens T (h, d, k^2); beta (h, k^2).

Three implementations of the same function:

* :func:`aggregated_attention_unfold`: the official native path: ``F.unfold`` materialises the
  k^2 neighbours of K and V (k^2 x their memory) and a padding mask;
* :func:`aggregated_attention_reference`: the fastest torch form we found: a zero-padded K/V
  map read through k^2 shifted *views*, so nothing of size k^2 x K is ever stored;
* :func:`aggregated_attention`: one Triton kernel per (query tile, batch-head) doing all of (2.4)-
  (2.7) on chip: N_i from the tile's coordinates, the k^2 gathered neighbours, the P pooled keys,
  both biases, the joint softmax and both value sums.  The official CUDA extension fuses only
  QK + bias + mask and AV, leaving the softmax and the whole pooled path to PyTorch.
  Its backward, eq. (2.8), runs in torch on the saved inputs (it recomputes the softmax, like
  activation checkpointing, so no (B, h, L, k^2 + P) weight tensor is kept between passes).

Backward, with g = dL/do_i and lam_i = tau ln N_i (sums over "(i, z) -> j" run over the queries
whose slot z is token j, the inverse neighbourhood; off-map slots contribute nothing):

    dw_iz = g_i . v_rho_z(i),   da^p_im = g_i . v^p_m,   dv_j = sum_(i,z)->j w_iz g_i,
    dv^p_m = sum_i a^p_im g_i,  dT_z = sum_i q^_i dw_iz,  dbeta_z = sum_i dw_iz,
    dl = a * (da - sum(a da))   over the joint (k^2 + P) row, with da_iz = dw_iz,
    db_z = sum_i dl_iz,  dB_im = sum_b dl^p_im,
    dq~_i = sum_z dl_iz k^_rho_z(i) + sum_m dl^p_im k^p_m,
    dk^_j = sum_(i,z)->j dl_iz q~_i,   dk^p_m = sum_i dl^p_im q~_i,
    dq^_i = lam_i dq~_i + sum_z dw_iz T_z,   de = sum_i lam_i dq~_i,
    dtau = sum_i ln N_i  dq~_i . (q^_i + e)                                               (2.8)
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._runtime import HAS_TRITON, register_kernel_module, require_float, triton_usable

register_kernel_module(__name__)


# ------------------------------------------------------------------------------ helpers
@functools.lru_cache(maxsize=64)
def _window_validity_cpu(h: int, w: int, k: int) -> torch.Tensor:
    r = torch.arange(h).repeat_interleave(w)[:, None]
    c = torch.arange(w).repeat(h)[:, None]
    a = torch.arange(k * k)[None, :]
    rr, cc = r + a // k - k // 2, c + a % k - k // 2
    return (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)


def window_validity(h: int, w: int, k: int, device=None) -> torch.Tensor:
    """(H W, k^2) bool: is window slot z of query i on the map (eq. 2.4)."""
    if k % 2 != 1 or k < 1:
        raise ValueError(f"the window size must be odd and positive, got {k}")
    return _window_validity_cpu(h, w, k).to(device)


def key_counts(h: int, w: int, k: int, p: int, device=None) -> torch.Tensor:
    """N_i of eq. (2.4): valid window keys + P pooled keys, (H W,) float."""
    return window_validity(h, w, k, device).sum(-1).to(torch.float32) + p


def length_scale(tau: torch.Tensor, h: int, w: int, k: int, p: int, length_scaled: bool = True) -> torch.Tensor:
    """lam_i = tau ln N_i of eq. (2.5), shaped (1, heads, H W, 1) to scale q (``length_scaled=False``:
    lam_i = tau, the plain scaled dot product's constant)."""
    if not length_scaled:
        return tau[None, :, None, None].expand(1, -1, h * w, 1)
    log_n = torch.log(key_counts(h, w, k, p, tau.device).to(tau.dtype))
    return tau[None, :, None, None] * log_n[None, None, :, None]


def _check(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, hw, window):
    require_float("aggregated_attention", q=q, k=k, v=v, kp=kp, vp=vp, qe=qe, tau=tau, b_loc=b_loc,
                  b_pool=b_pool, tokens=tokens, beta=beta)
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"aggregated_attention: q, k, v must be (B, h, H*W, d) alike, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, nh, n, d = q.shape
    h, w = hw
    if h * w != n:
        raise ValueError(f"aggregated_attention: H*W = {h}*{w} = {h * w} but q has {n} tokens")
    if window % 2 != 1:
        raise ValueError(f"aggregated_attention: the window size must be odd, got {window}")
    if kp.ndim != 4 or kp.shape[:2] != (b, nh) or kp.shape[3] != d or vp.shape != kp.shape:
        raise ValueError(f"aggregated_attention: kp, vp must be (B, h, P, d) = ({b}, {nh}, P, {d}), got "
                         f"{tuple(kp.shape)}, {tuple(vp.shape)}")
    kk, p = window * window, kp.shape[2]
    want = {"qe": (qe, (nh, d)), "tau": (tau, (nh,)), "b_loc": (b_loc, (nh, kk)), "b_pool": (b_pool, (nh, n, p)),
            "tokens": (tokens, (nh, d, kk)), "beta": (beta, (nh, kk))}
    for name, (t, shape) in want.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"aggregated_attention: {name} must have shape {shape}, got {tuple(t.shape)}")


# ------------------------------------------------------------------------------ references
def _joint_softmax_output(q, qt, loc, pool, valid, vloc_fn, vp, tokens, beta, kk):
    """Shared tail of both references: joint softmax, positional term, the two value sums."""
    loc = loc.masked_fill(~valid, float("-inf"))
    a = torch.softmax(torch.cat([loc, pool], -1), -1)
    a_loc, a_pool = a[..., :kk], a[..., kk:]
    w_loc = a_loc + torch.einsum("bhnd,hdz->bhnz", q, tokens) + beta[None, :, None, :]        # eq. (2.7)
    return vloc_fn(w_loc) + a_pool @ vp


def aggregated_attention_unfold(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, hw, window=3):
    """Eqs. (2.4)-(2.7) as the official native code computes them (``F.unfold`` of K and V)."""
    _check(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, hw, window)
    b, nh, n, d = q.shape
    h, w = hw
    kk = window * window
    valid = window_validity(h, w, window, q.device)
    scale = length_scale(tau, h, w, window, kp.shape[2])
    qt = (q + qe[None, :, None, :]) * scale                                                 # eq. (2.5)
    unf = lambda t: F.unfold(t.transpose(-1, -2).reshape(b, nh * d, h, w), window, padding=window // 2) \
        .reshape(b, nh, d, kk, n).permute(0, 1, 4, 2, 3)                                   # (B, h, N, d, k^2)
    k_loc, v_loc = unf(k), unf(v)
    loc = (qt.unsqueeze(-2) @ k_loc).squeeze(-2) + b_loc[None, :, None, :]                  # eq. (2.6)
    pool = qt @ kp.transpose(-1, -2) + b_pool[None]
    return _joint_softmax_output(q, qt, loc, pool, valid, lambda wl: (wl.unsqueeze(-2) @ v_loc.transpose(-1, -2))
                                 .squeeze(-2), vp, tokens, beta, kk)


def _shifted(t, hw, window):
    """The k^2 shifted views (B, h, H, W, d) of a zero-padded map: view z holds rho_z(i) at i.
    Views of one padded copy: no per-slot copy (a reshape to (B, h, N, d) would copy each)."""
    b, nh, n, d = t.shape
    h, w = hw
    r = window // 2
    padded = F.pad(t.reshape(b, nh, h, w, d), (0, 0, r, r, r, r))
    return [padded[:, :, a1:a1 + h, a2:a2 + w, :] for a1 in range(window) for a2 in range(window)]


def window_dots(q: torch.Tensor, k: torch.Tensor, hw, window: int) -> torch.Tensor:
    """(B, h, N, k^2): q_i . k_{rho_z(i)} for every slot z (0 for off-map slots, which read the padding)."""
    b, nh, n, d = q.shape
    q5 = q.reshape(b, nh, *hw, d)
    return torch.stack([(q5 * kz).sum(-1) for kz in _shifted(k, hw, window)], -1).reshape(b, nh, n, -1)


def window_sum(wts: torch.Tensor, v: torch.Tensor, hw, window: int) -> torch.Tensor:
    """(B, h, N, d): sum_z wts_iz v_{rho_z(i)} (off-map slots read zeros)."""
    b, nh, n, kk = wts.shape
    w5 = wts.reshape(b, nh, *hw, kk)
    out = None
    for z, vz in enumerate(_shifted(v, hw, window)):
        term = w5[..., z, None] * vz
        out = term if out is None else out.add_(term)
    return out.reshape(b, nh, n, -1)


def aggregated_attention_reference(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, hw, window=3,
                                   length_scaled=True):
    """Eqs. (2.4)-(2.7) with shifted views of one zero-padded K and V: no k^2-fold copy.

    ``length_scaled=False`` drops ln N_i from eq. (2.5) (the plain-softmax comparator of chapter 02).
    """
    _check(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, hw, window)
    h, w = hw
    kk = window * window
    valid = window_validity(h, w, window, q.device)
    scale = length_scale(tau, h, w, window, kp.shape[2], length_scaled)
    qt = (q + qe[None, :, None, :]) * scale
    loc = window_dots(qt, k, hw, window) + b_loc[None, :, None, :]
    pool = qt @ kp.transpose(-1, -2) + b_pool[None]
    return _joint_softmax_output(q, qt, loc, pool, valid, lambda wl: window_sum(wl, v, hw, window),
                                 vp, tokens, beta, kk)


# ------------------------------------------------------------------------------ Triton
# One program = BLOCK_M consecutive queries (row-major pixels) of one batch-head.  Its k^2
# neighbour rows are gathered straight from K and V with the off-map slots masked (the zero
# padding is never built), the P pooled keys/values (P <= a few hundred) sit in one tile, and
# the k^2 + P logits live in registers: a (BLOCK_M, KKP) tile for the window slots and a
# (BLOCK_M, PP) tile for the pooled keys, softmax-ed together.
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _neighbour(r, c, rows, z, H, W, L, K: tl.constexpr):
        """Token index and on-map flag of window slot z for queries at (r, c)."""
        rr = r + z // K - K // 2
        cc = c + z % K - K // 2
        inb = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W) & (rows < L)
        return rr * W + cc, inb

    @triton.jit
    def _agg_attn_fwd(Q, Kt, V, KP, VP, QE, TAU, BLOC, BPOOL, TOK, BETA, O, NH, H, W, L, P, D,
                      K: tl.constexpr, KKP: tl.constexpr, PP: tl.constexpr, DP: tl.constexpr,
                      BLOCK_M: tl.constexpr, ACC: tl.constexpr):
        pid_m, bh = tl.program_id(0), tl.program_id(1)
        head = bh % NH
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dd = tl.arange(0, DP)
        zz = tl.arange(0, KKP)
        mm = tl.arange(0, PP)
        r, c = rows // W, rows % W
        dmask = dd[None, :] < D
        base = bh * L * D
        q = tl.load(Q + base + rows[:, None] * D + dd[None, :], mask=(rows[:, None] < L) & dmask,
                    other=0.0).to(ACC)
        # eq. (2.4): N_i from the tile's own coordinates
        n_loc = tl.zeros((BLOCK_M,), ACC)
        for z in tl.static_range(K * K):
            _, inb = _neighbour(r, c, rows, z, H, W, L, K)
            n_loc += inb.to(ACC)
        tau = tl.load(TAU + head).to(ACC)
        qe = tl.load(QE + head * D + dd, mask=dd < D, other=0.0).to(ACC)
        qt = (q + qe[None, :]) * (tau * tl.log(n_loc + P))[:, None]                     # eq. (2.5)
        # eq. (2.6), window part: one gathered key row per slot
        loc = tl.full((BLOCK_M, KKP), float("-inf"), ACC)
        for z in tl.static_range(K * K):
            idx, inb = _neighbour(r, c, rows, z, H, W, L, K)
            kz = tl.load(Kt + base + idx[:, None] * D + dd[None, :], mask=inb[:, None] & dmask, other=0.0).to(ACC)
            lz = tl.sum(qt * kz, axis=1) + tl.load(BLOC + head * K * K + z).to(ACC)
            loc = tl.where(zz[None, :] == z, tl.where(inb, lz, float("-inf"))[:, None], loc)
        # eq. (2.6), pooled part: a small dense tile
        pbase = bh * P * D
        pmask = (mm[:, None] < P) & dmask
        kp = tl.load(KP + pbase + mm[:, None] * D + dd[None, :], mask=pmask, other=0.0).to(ACC)
        vp = tl.load(VP + pbase + mm[:, None] * D + dd[None, :], mask=pmask, other=0.0).to(ACC)
        bmask = (rows[:, None] < L) & (mm[None, :] < P)
        pool = tl.dot(qt, tl.trans(kp), input_precision="ieee") \
            + tl.load(BPOOL + head * L * P + rows[:, None] * P + mm[None, :], mask=bmask, other=0.0).to(ACC)
        pool = tl.where(mm[None, :] < P, pool, float("-inf"))
        # one joint softmax over the k^2 + P logits
        mx = tl.maximum(tl.max(loc, axis=1), tl.max(pool, axis=1))
        e_loc = tl.exp(loc - mx[:, None])
        e_pool = tl.exp(pool - mx[:, None])
        den = tl.sum(e_loc, axis=1) + tl.sum(e_pool, axis=1)
        a_loc = e_loc / den[:, None]
        acc = tl.dot(e_pool / den[:, None], vp, input_precision="ieee")
        # eq. (2.7): window weights + positional attention (plain q^), gathered values
        for z in tl.static_range(K * K):
            idx, inb = _neighbour(r, c, rows, z, H, W, L, K)
            tz = tl.load(TOK + head * D * K * K + dd * K * K + z, mask=dd < D, other=0.0).to(ACC)
            wz = tl.sum(tl.where(zz[None, :] == z, a_loc, 0.0), axis=1) + tl.sum(q * tz[None, :], axis=1) \
                + tl.load(BETA + head * K * K + z).to(ACC)
            vz = tl.load(V + base + idx[:, None] * D + dd[None, :], mask=inb[:, None] & dmask, other=0.0).to(ACC)
            acc += wz[:, None] * vz
        tl.store(O + base + rows[:, None] * D + dd[None, :], acc.to(O.dtype.element_ty),
                 mask=(rows[:, None] < L) & dmask)


BLOCK_M = 16


def aggregated_attention_forward_triton(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, hw, window=3):
    """Eqs. (2.4)-(2.7) in one launch: grid (ceil(L / BLOCK_M), B h)."""
    _check(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, hw, window)
    b, nh, n, d = q.shape
    p = kp.shape[2]
    ts = [t.contiguous() for t in (q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta)]
    o = torch.empty_like(ts[0])
    acc = tl.float64 if q.dtype == torch.float64 else tl.float32
    _agg_attn_fwd[(triton.cdiv(n, BLOCK_M), b * nh)](
        *ts, o, nh, hw[0], hw[1], n, p, d, K=window, KKP=max(16, triton.next_power_of_2(window * window)),
        PP=max(16, triton.next_power_of_2(p)), DP=max(16, triton.next_power_of_2(d)), BLOCK_M=BLOCK_M, ACC=acc)
    return o


# ------------------------------------------------------------------------------ custom op
def _use_triton(q):
    return triton_usable(q) and (q.is_cuda or q.dtype != torch.bfloat16)


@torch.library.custom_op("hrvit_edu::aggregated_attention", mutates_args=())
def aggregated_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kp: torch.Tensor,
                            vp: torch.Tensor, qe: torch.Tensor, tau: torch.Tensor, b_loc: torch.Tensor,
                            b_pool: torch.Tensor, tokens: torch.Tensor, beta: torch.Tensor,
                            h: int, w: int, window: int) -> torch.Tensor:
    """Eqs. (2.4)-(2.7): the fused kernel when usable, else the shifted-view reference."""
    args = (q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, (h, w), window)
    if _use_triton(q):
        return aggregated_attention_forward_triton(*args)
    return aggregated_attention_reference(*args).contiguous()


@aggregated_attention_op.register_fake
def _(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, h, w, window):
    _check(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, (h, w), window)
    return torch.empty_like(q)


def _scatter_shifted(parts, hw, window):
    """Adjoint of :func:`_shifted`: add view z of every part back where it was read from."""
    b, nh, n, d = parts[0].shape
    h, w = hw
    r = window // 2
    out = parts[0].new_zeros(b, nh, h + 2 * r, w + 2 * r, d)
    for z, t in enumerate(parts):                   # t: (B, h, N, d)
        a1, a2 = divmod(z, window)
        out[:, :, a1:a1 + h, a2:a2 + w, :] += t.reshape(b, nh, h, w, d)
    return out[:, :, r:r + h, r:r + w, :].reshape(b, nh, n, d)


def aggregated_attention_backward_reference(do, q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, hw,
                                            window=3):
    """Eq. (2.8): the gradients of all eleven tensor inputs, in torch."""
    h, w = hw
    kk = window * window
    valid = window_validity(h, w, window, q.device)
    log_n = torch.log(key_counts(h, w, window, kp.shape[2], q.device).to(q.dtype))[None, None, :, None]
    lam = length_scale(tau, h, w, window, kp.shape[2])
    qe_ = q + qe[None, :, None, :]
    qt = qe_ * lam
    loc = window_dots(qt, k, hw, window) + b_loc[None, :, None, :]
    loc = loc.masked_fill(~valid, float("-inf"))
    pool = qt @ kp.transpose(-1, -2) + b_pool[None]
    a = torch.softmax(torch.cat([loc, pool], -1), -1)
    a_loc, a_pool = a[..., :kk], a[..., kk:]
    w_loc = a_loc + torch.einsum("bhnd,hdz->bhnz", q, tokens) + beta[None, :, None, :]
    dw = window_dots(do, v, hw, window)                                         # off-map v = 0 -> dw = 0
    da = torch.cat([dw, do @ vp.transpose(-1, -2)], -1)
    dl = a * (da - (a * da).sum(-1, keepdim=True))
    dl_loc, dl_pool = dl[..., :kk], dl[..., kk:]
    dv = _scatter_shifted([w_loc[..., z, None] * do for z in range(kk)], hw, window)
    dvp = a_pool.transpose(-1, -2) @ do
    dtokens = torch.einsum("bhnd,bhnz->hdz", q, dw)
    dbeta = dw.sum((0, 2))
    db_loc = dl_loc.sum((0, 2))
    db_pool = dl_pool.sum(0)
    dqt = window_sum(dl_loc, k, hw, window) + dl_pool @ kp
    dk = _scatter_shifted([dl_loc[..., z, None] * qt for z in range(kk)], hw, window)
    dkp = dl_pool.transpose(-1, -2) @ qt
    dq = lam * dqt + torch.einsum("bhnz,hdz->bhnd", dw, tokens)
    dqe = (lam * dqt).sum((0, 2))
    dtau = (log_n * dqt * qe_).sum((0, 2, 3))
    return [dq, dk, dv, dkp, dvp, dqe, dtau, db_loc, db_pool, dtokens, dbeta]


@torch.library.custom_op("hrvit_edu::aggregated_attention_backward", mutates_args=())
def aggregated_attention_backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     kp: torch.Tensor, vp: torch.Tensor, qe: torch.Tensor, tau: torch.Tensor,
                                     b_loc: torch.Tensor, b_pool: torch.Tensor, tokens: torch.Tensor,
                                     beta: torch.Tensor, h: int, w: int, window: int) -> list[torch.Tensor]:
    """Gradients of all eleven tensor inputs, eq. (2.8) (fp16/bf16 computed in fp32)."""
    ins = (do, q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta)
    acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    grads = aggregated_attention_backward_reference(*(t.to(acc) for t in ins), (h, w), window)
    return [g.to(t.dtype).contiguous() for g, t in zip(grads, ins[1:])]


@aggregated_attention_backward_op.register_fake
def _(do, q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, h, w, window):
    return [torch.empty_like(t) for t in (q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta)]


def _setup_context(ctx, inputs, output):
    *tensors, h, w, window = inputs
    ctx.save_for_backward(*tensors)
    ctx.hw_window = (h, w, window)


def _backward(ctx, do):
    grads = aggregated_attention_backward_op(do.contiguous(), *ctx.saved_tensors, *ctx.hw_window)
    return (*grads, None, None, None)


aggregated_attention_op.register_autograd(_backward, setup_context=_setup_context)


def aggregated_attention(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta, hw, window=3):
    """Eqs. (2.4)-(2.7) through the fused op (Triton when usable; autograd and compile aware)."""
    return aggregated_attention_op(q, k, v, kp, vp, qe, tau, b_loc, b_pool, tokens, beta,
                                   int(hw[0]), int(hw[1]), int(window))
