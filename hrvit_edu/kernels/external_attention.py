"""RTFormer's GPU-friendly attention (GFA): external attention with grouped double normalisation.

For one image, X (C, N) the (batch-normalised) queries, learnable memories K (M, C) and V (O, M),
G groups of M_g = M / G contiguous memory units, g(m) the group of unit m:

    A[m, n]   = sum_c K[m, c] X[c, n]                                   logits        (3.1)
    S[m, n]   = exp(A[m, n] - L[m]),   L[m] = log sum_n' exp(A[m, n'])  softmax over N (3.2)
    R[g, n]   = sum_{m in g} S[m, n]                                    group sums
    Ah[m, n]  = S[m, n] / (R[g(m), n] + eps)                            L1 over M_g   (3.3)
    Y[o, n]   = sum_m V[o, m] Ah[m, n]                                  values        (3.4)

G = 1 is EANet's double normalisation.  Eager PyTorch writes A, S and Ah (three M x N tensors) to
memory; the fused forward never does.  The obstacle is (3.2): a softmax over the *positions*, so
no row n of Ah can be formed before L[m] has seen every position.  Hence two passes:

* pass 1 (``_gfa_colstats``): grid (B, G, SPLIT).  Each program streams its share of the
  positions for one group of units and keeps an online max and sum of exponentials per unit
  (the flash-attention recurrence, run down the columns); the SPLIT partial results are merged
  with one logsumexp in torch (B x SPLIT x M numbers);
* pass 2 (``_gfa_fwd``): grid (B, N-tiles).  For its tile of positions a program forms each
  group's normalised tile Ah_g once (the logits recomputed from X and K, normalised with L and the
  group sum, both now known) and multiplies it into *every* output tile, Y += Ah_g^T V_g^T.  Y is
  an fp32 buffer accumulated in memory across the groups (only this program touches these rows,
  so no atomics); giving each program one output tile instead would recompute the logits once
  per output tile (chapter 03's roofline prices both).

Backward, with dY (O, N) (the reverse of (3.4)-(3.1)):

    dAh[m, n] = sum_o V[o, m] dY[o, n]
    dS[m, n]  = (dAh[m, n] - sum_{m' in g(m)} dAh[m', n] Ah[m', n]) / (R[g(m), n] + eps)     (3.9)
    D[m]      = sum_n dS[m, n] S[m, n]                                  a column reduction
    dA[m, n]  = S[m, n] (dS[m, n] - D[m])
    dX = K^T dA,   dK = sum_b dA X^T,   dV = sum_b dY Ah^T      (K and V are shared by the batch)

D is the backward's column statistic: again every position must be seen before dA exists, so
again two passes (``_gfa_bwd_colstats`` then ``_gfa_bwd_scores``).  The second writes dA and Ah
(M x N each) and hands the three GEMMs above to the BLAS library; fusing them too is the next
step a production kernel would take (left for the exercises' readers).
"""
from __future__ import annotations

import torch

from ._runtime import HAS_TRITON, register_kernel_module, require_float, triton_usable

register_kernel_module(__name__)

EPS = 1e-6        # the official code's epsilon in (3.3)


# ------------------------------------------------------------------------------ reference
def _check(x, k, v, groups):
    require_float("external_attention", x=x, k=k, v=v)
    if x.ndim != 3:
        raise ValueError(f"external_attention expects x (B, C, N), got shape {tuple(x.shape)}")
    if k.ndim != 2 or v.ndim != 2:
        raise ValueError(f"external_attention expects k (M, C) and v (O, M), got {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    if k.shape[1] != x.shape[1]:
        raise ValueError(f"k has {k.shape[1]} channels, x has {x.shape[1]}")
    if v.shape[1] != k.shape[0]:
        raise ValueError(f"v reads {v.shape[1]} memory units, k has {k.shape[0]}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or k.shape[0] % groups:
        raise ValueError(f"groups must be a positive integer dividing M = {k.shape[0]}, got {groups!r}")
    if x.shape[2] < 1:
        raise ValueError("external_attention needs at least one position (N >= 1)")


def grouped_double_norm(a: torch.Tensor, groups: int, eps: float = EPS) -> torch.Tensor:
    """Eqs. (3.2)-(3.3) on logits a (B, M, N): softmax over N, then L1 over each group of units."""
    b, m, n = a.shape
    s = a.softmax(dim=-1).view(b, groups, m // groups, n)
    return (s / (s.sum(dim=2, keepdim=True) + eps)).view(b, m, n)


def external_attention_reference(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int = 1,
                                 eps: float = EPS) -> torch.Tensor:
    """Eqs. (3.1)-(3.4) in torch: x (B, C, N), k (M, C), v (O, M) -> (B, O, N).
    fp16/bf16 inputs are computed in fp32 and rounded (the kernel's contract)."""
    _check(x, k, v, groups)
    work = torch.promote_types(x.dtype, torch.float32)
    a = torch.einsum("mc,bcn->bmn", k.to(work), x.to(work))
    return torch.einsum("om,bmn->bon", v.to(work), grouped_double_norm(a, groups, eps)).to(x.dtype)


def external_attention_backward_reference(x, k, v, dy, groups: int = 1, eps: float = EPS):
    """Eq. (3.9) and the three gradient GEMMs, in torch: (dx, dk, dv)."""
    work = torch.promote_types(x.dtype, torch.float32)
    xw, kw, vw, dyw = (t.to(work) for t in (x, k, v, dy))
    b, m, n = x.shape[0], k.shape[0], x.shape[2]
    s = torch.einsum("mc,bcn->bmn", kw, xw).softmax(dim=-1)
    sg = s.view(b, groups, m // groups, n)
    r = sg.sum(dim=2, keepdim=True) + eps
    ah = sg / r
    dah = torch.einsum("om,bon->bmn", vw, dyw).view_as(sg)
    ds = (dah - (dah * ah).sum(dim=2, keepdim=True)) / r
    ds, ah = ds.view(b, m, n), ah.view(b, m, n)
    da = s * (ds - (ds * s).sum(dim=-1, keepdim=True))
    dx = torch.einsum("mc,bmn->bcn", kw, da)
    dk = torch.einsum("bmn,bcn->mc", da, xw)
    dv = torch.einsum("bon,bmn->om", dyw, ah)
    return dx.to(x.dtype), dk.to(k.dtype), dv.to(v.dtype)


# ------------------------------------------------------------------------------ Triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _logits_tile(X, K, b, n, m, N, C, sxb, sxc, sxn, m_ok, BN: tl.constexpr, BC: tl.constexpr,
                     BG: tl.constexpr, ACC: tl.constexpr):
        """A[n, m] for a tile of positions n (BN,) and units m (BG,): eq. (3.1), transposed."""
        acc = tl.zeros((BN, BG), dtype=ACC)
        for c0 in range(0, C, BC):
            c = c0 + tl.arange(0, BC)
            xt = tl.load(X + b * sxb + c[None, :] * sxc + n[:, None] * sxn,
                         mask=(n[:, None] < N) & (c[None, :] < C), other=0.0).to(ACC)      # (BN, BC)
            kt = tl.load(K + m[None, :] * C + c[:, None],
                         mask=(c[:, None] < C) & m_ok[None, :], other=0.0).to(ACC)         # (BC, BG)
            acc += tl.dot(xt, kt, input_precision="ieee")
        return acc

    @triton.jit
    def _normalised_tile(X, K, LSE, b, n, m, N, C, M, sxb, sxc, sxn, m_ok, eps, BN: tl.constexpr,
                         BC: tl.constexpr, BG: tl.constexpr, ACC: tl.constexpr):
        """(S, R + eps, Ah) of eqs. (3.2)-(3.3) for one tile of positions and one group of units."""
        a = _logits_tile(X, K, b, n, m, N, C, sxb, sxc, sxn, m_ok, BN, BC, BG, ACC)
        lse = tl.load(LSE + b * M + m, mask=m_ok, other=0.0)
        s = tl.where(m_ok[None, :], tl.exp(a - lse[None, :]), 0.0)
        r = tl.sum(s, axis=1) + eps
        return s, r, s / r[:, None]

    @triton.jit
    def _gfa_colstats(X, K, PMAX, PSUM, N, C, M, MG, CHUNK, sxb, sxc, sxn, SPLIT,
                      BN: tl.constexpr, BC: tl.constexpr, BG: tl.constexpr, ACC: tl.constexpr):
        """Pass 1: running max and sum of exp(A[m, n]) over this program's chunk of positions."""
        b, g, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        j = tl.arange(0, BG)
        m, m_ok = g * MG + j, j < MG
        run_max = tl.full((BG,), float("-inf"), dtype=ACC)
        run_sum = tl.zeros((BG,), dtype=ACC)
        for n0 in range(sp * CHUNK, tl.minimum(sp * CHUNK + CHUNK, N), BN):
            n = n0 + tl.arange(0, BN)
            a = _logits_tile(X, K, b, n, m, N, C, sxb, sxc, sxn, m_ok, BN, BC, BG, ACC)
            a = tl.where(n[:, None] < N, a, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(a, axis=0))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(a - new_max[None, :]), axis=0)
            run_max = new_max
        out = (b * SPLIT + sp) * M + m
        tl.store(PMAX + out, run_max, mask=m_ok)
        tl.store(PSUM + out, run_sum, mask=m_ok)

    @triton.jit
    def _gfa_fwd(X, K, V, LSE, Y, N, C, M, MG, O, G, eps, sxb, sxc, sxn, syb, syo, syn,
                 BN: tl.constexpr, BC: tl.constexpr, BG: tl.constexpr, BO: tl.constexpr, ACC: tl.constexpr):
        """Pass 2: for BN positions, Y += Ah_g^T V_g^T group by group (Y zeroed, fp32/fp64)."""
        b = tl.program_id(0)
        n = tl.program_id(1) * BN + tl.arange(0, BN)
        j = tl.arange(0, BG)
        for g in range(0, G):
            m, m_ok = g * MG + j, j < MG
            _, _, ah = _normalised_tile(X, K, LSE, b, n, m, N, C, M, sxb, sxc, sxn, m_ok, eps, BN, BC, BG, ACC)
            for o0 in range(0, O, BO):
                o = o0 + tl.arange(0, BO)
                vt = tl.load(V + o[None, :] * M + m[:, None], mask=m_ok[:, None] & (o[None, :] < O),
                             other=0.0).to(ACC)                                          # (BG, BO)
                ptr = Y + b * syb + o[None, :] * syo + n[:, None] * syn
                ok = (n[:, None] < N) & (o[None, :] < O)
                acc = tl.load(ptr, mask=ok, other=0.0) + tl.dot(ah, vt, input_precision="ieee")
                tl.store(ptr, acc, mask=ok)
            tl.debug_barrier()          # this group's stores land before the next group reads them

    @triton.jit
    def _dah_tile(DY, V, b, n, m, N, O, M, sdb, sdo, sdn, m_ok, BN: tl.constexpr, BG: tl.constexpr,
                  BO: tl.constexpr, ACC: tl.constexpr):
        """dAh[n, m] = sum_o dY[o, n] V[o, m] for one tile."""
        acc = tl.zeros((BN, BG), dtype=ACC)
        for o0 in range(0, O, BO):
            o = o0 + tl.arange(0, BO)
            dy = tl.load(DY + b * sdb + o[None, :] * sdo + n[:, None] * sdn,
                         mask=(n[:, None] < N) & (o[None, :] < O), other=0.0).to(ACC)     # (BN, BO)
            vt = tl.load(V + o[:, None] * M + m[None, :], mask=(o[:, None] < O) & m_ok[None, :],
                         other=0.0).to(ACC)                                              # (BO, BG)
            acc += tl.dot(dy, vt, input_precision="ieee")
        return acc

    @triton.jit
    def _ds_tile(X, K, V, LSE, DY, b, n, m, N, C, M, O, sxb, sxc, sxn, sdb, sdo, sdn, m_ok, eps,
                 BN: tl.constexpr, BC: tl.constexpr, BG: tl.constexpr, BO: tl.constexpr, ACC: tl.constexpr):
        """(S, Ah, dS) of eq. (3.9) for one tile of positions and one group of units."""
        s, r, ah = _normalised_tile(X, K, LSE, b, n, m, N, C, M, sxb, sxc, sxn, m_ok, eps, BN, BC, BG, ACC)
        dah = _dah_tile(DY, V, b, n, m, N, O, M, sdb, sdo, sdn, m_ok, BN, BG, BO, ACC)
        ds = (dah - tl.sum(dah * ah, axis=1)[:, None]) / r[:, None]
        return s, ah, ds

    @triton.jit
    def _gfa_bwd_colstats(X, K, V, LSE, DY, PD, N, C, M, MG, O, CHUNK, eps, sxb, sxc, sxn, sdb, sdo, sdn,
                          SPLIT, BN: tl.constexpr, BC: tl.constexpr, BG: tl.constexpr, BO: tl.constexpr,
                          ACC: tl.constexpr):
        """Backward pass 1: partial D[m] = sum_n dS[m, n] S[m, n] over this program's positions."""
        b, g, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        j = tl.arange(0, BG)
        m, m_ok = g * MG + j, j < MG
        d = tl.zeros((BG,), dtype=ACC)
        for n0 in range(sp * CHUNK, tl.minimum(sp * CHUNK + CHUNK, N), BN):
            n = n0 + tl.arange(0, BN)
            s, _, ds = _ds_tile(X, K, V, LSE, DY, b, n, m, N, C, M, O, sxb, sxc, sxn, sdb, sdo, sdn, m_ok,
                                eps, BN, BC, BG, BO, ACC)
            d += tl.sum(tl.where(n[:, None] < N, ds * s, 0.0), axis=0)
        tl.store(PD + (b * SPLIT + sp) * M + m, d, mask=m_ok)

    @triton.jit
    def _gfa_bwd_scores(X, K, V, LSE, DY, D, DA, AH, N, C, M, MG, O, eps, sxb, sxc, sxn, sdb, sdo, sdn,
                        BN: tl.constexpr, BC: tl.constexpr, BG: tl.constexpr, BO: tl.constexpr,
                        ACC: tl.constexpr):
        """Backward pass 2: dA = S (dS - D) and Ah for one tile, written (B, M, N)."""
        b = tl.program_id(0)
        n = tl.program_id(1) * BN + tl.arange(0, BN)
        j = tl.arange(0, BG)
        m, m_ok = tl.program_id(2) * MG + j, j < MG
        s, ah, ds = _ds_tile(X, K, V, LSE, DY, b, n, m, N, C, M, O, sxb, sxc, sxn, sdb, sdo, sdn, m_ok,
                             eps, BN, BC, BG, BO, ACC)
        dm = tl.load(D + b * M + m, mask=m_ok, other=0.0)
        da = s * (ds - dm[None, :])
        out = b * M * N + m[None, :] * N + n[:, None]
        ok = (n[:, None] < N) & m_ok[None, :]
        tl.store(DA + out, da, mask=ok)
        tl.store(AH + out, ah, mask=ok)


BN, BC, BO = 32, 32, 32
CHUNK_TILES = 8          # pass 1: positions per program = CHUNK_TILES * BN, merged by logsumexp
MAX_BLOCK_G = 128        # a group of units is one register tile: larger groups use the reference


def _acc(t):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _work(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _block_g(mg: int) -> int:
    """A group of units as one tile: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(mg))


def _split(n: int) -> tuple[int, int]:
    chunk = CHUNK_TILES * BN
    return chunk, triton.cdiv(n, chunk)


def column_logsumexp_triton(x, k, groups):
    """Pass 1: L[b, m] = log sum_n exp(A[b, m, n]), eq. (3.2)'s column statistic, (B, M) in fp32."""
    b, c, n = x.shape
    m = k.shape[0]
    chunk, split = _split(n)
    pmax = torch.empty(b, split, m, device=x.device, dtype=_work(x))
    psum = torch.empty_like(pmax)
    _gfa_colstats[(b, groups, split)](x, k.contiguous(), pmax, psum, n, c, m, m // groups, chunk, *x.stride(),
                                      split, BN=BN, BC=BC, BG=_block_g(m // groups), ACC=_acc(x))
    return torch.logsumexp(pmax + psum.log(), dim=1)


def external_attention_triton(x, k, v, groups=1, eps=EPS):
    """Eqs. (3.1)-(3.4) in two launches (plus zeroing Y); returns (Y, L), L the column log-sum-exp (B, M)."""
    _check(x, k, v, groups)
    b, c, n = x.shape
    m, o = k.shape[0], v.shape[0]
    lse = column_logsumexp_triton(x, k, groups)
    y = torch.zeros(b, o, n, device=x.device, dtype=_work(x))          # accumulated across groups
    _gfa_fwd[(b, triton.cdiv(n, BN))](
        x, k.contiguous(), v.contiguous(), lse, y, n, c, m, m // groups, o, groups, eps, *x.stride(),
        *y.stride(), BN=BN, BC=BC, BG=_block_g(m // groups), BO=BO, ACC=_acc(x))
    return y.to(x.dtype), lse


def external_attention_backward_triton(x, k, v, lse, dy, groups=1, eps=EPS):
    """Eq. (3.9) in two launches (D, then dA and Ah), then three GEMMs: (dx, dk, dv)."""
    b, c, n = x.shape
    m, o = k.shape[0], v.shape[0]
    kc, vc = k.contiguous(), v.contiguous()
    chunk, split = _split(n)
    bg = _block_g(m // groups)
    pd = torch.empty(b, split, m, device=x.device, dtype=_work(x))
    _gfa_bwd_colstats[(b, groups, split)](x, kc, vc, lse, dy, pd, n, c, m, m // groups, o, chunk, eps,
                                          *x.stride(), *dy.stride(), split, BN=BN, BC=BC, BG=bg, BO=BO,
                                          ACC=_acc(x))
    d = pd.sum(dim=1)
    da = torch.empty(b, m, n, device=x.device, dtype=_work(x))
    ah = torch.empty_like(da)
    _gfa_bwd_scores[(b, triton.cdiv(n, BN), groups)](x, kc, vc, lse, dy, d, da, ah, n, c, m, m // groups, o,
                                                    eps, *x.stride(), *dy.stride(), BN=BN, BC=BC, BG=bg,
                                                    BO=BO, ACC=_acc(x))
    xw, dyw = x.to(da.dtype), dy.to(da.dtype)
    dx = torch.matmul(kc.to(da.dtype).t(), da)                       # (B, C, N) = K^T dA
    dk = torch.einsum("bmn,bcn->mc", da, xw)                         # dA X^T, summed over images
    dv = torch.einsum("bon,bmn->om", dyw, ah)                        # dY Ah^T
    return dx.to(x.dtype), dk.to(k.dtype), dv.to(v.dtype)


# ------------------------------------------------------------------------------ custom op
def _kernel_ok(x, k, v, groups):
    """The kernel runs when Triton is usable, bf16 is not asked of the interpreter, and a group of
    slots fits one register tile (M/G <= 128: the official G = 8 up to M = 1024); else the reference."""
    return (triton_usable(x, k, v) and (x.is_cuda or x.dtype != torch.bfloat16)
            and isinstance(groups, int) and groups > 0 and k.shape[0] % groups == 0
            and _block_g(k.shape[0] // groups) <= MAX_BLOCK_G)


@torch.library.custom_op("hrvit_edu::external_attention_fwd", mutates_args=())
def _external_attention_fwd(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int,
                            eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    if _kernel_ok(x, k, v, groups):
        return external_attention_triton(x, k, v, groups, eps)
    _check(x, k, v, groups)
    a = torch.einsum("mc,bcn->bmn", k.to(_work(x)), x.to(_work(x)))
    return external_attention_reference(x, k, v, groups, eps).contiguous(), torch.logsumexp(a, dim=-1)


@_external_attention_fwd.register_fake
def _(x, k, v, groups, eps):
    _check(x, k, v, groups)
    return x.new_empty(x.shape[0], v.shape[0], x.shape[2]), x.new_empty(x.shape[0], k.shape[0], dtype=_work(x))


@torch.library.custom_op("hrvit_edu::external_attention_backward", mutates_args=())
def external_attention_backward(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lse: torch.Tensor,
                                dy: torch.Tensor, groups: int, eps: float) -> list[torch.Tensor]:
    """(dx, dk, dv) of eqs. (3.1)-(3.4): the two-pass Triton backward when usable, else eq. (3.9) in torch."""
    if _kernel_ok(x, k, v, groups):
        return list(external_attention_backward_triton(x, k, v, lse, dy.contiguous(), groups, eps))
    return [t.contiguous() for t in external_attention_backward_reference(x, k, v, dy, groups, eps)]


@external_attention_backward.register_fake
def _(x, k, v, lse, dy, groups, eps):
    return [x.new_empty(x.shape), torch.empty_like(k), torch.empty_like(v)]


def _setup_context(ctx, inputs, output):
    x, k, v, groups, eps = inputs
    ctx.save_for_backward(x, k, v, output[1])
    ctx.groups, ctx.eps = groups, eps


def _backward(ctx, dy, _dlse):
    x, k, v, lse = ctx.saved_tensors
    dx, dk, dv = external_attention_backward(x, k, v, lse, dy, ctx.groups, ctx.eps)
    return dx, dk, dv, None, None


_external_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def external_attention(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int = 1,
                       eps: float = EPS) -> torch.Tensor:
    """Fused GFA, eqs. (3.1)-(3.4): x (B, C, N), k (M, C), v (O, M) -> (B, O, N).

    The Triton kernels when usable (CUDA, or the interpreter on CPU), else the torch reference;
    differentiable in x, k and v either way (custom op ``hrvit_edu::external_attention_fwd``).
    """
    return _external_attention_fwd(x, k, v, groups, eps)[0]
