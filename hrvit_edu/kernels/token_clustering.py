"""Expedite's two hot operators (chapter 05): local EM token clustering and top-k token
reconstruction.  Forward only: both layers are parameter-free and run inside a trained model.

**Local EM** (eqs. 5.3-5.4, kappa iterations).  Tokens X (B, N, C) on the H x W grid, centres
C (B, M, C) on the h x w grid, token i in cell (u_i, v_i) = (floor(y_i h / H), floor(x_i w / W)),
r = lambda // 2.  Token i's candidates are the centres of the lambda x lambda cells around its
own, slot s = (dy + r) lambda + (dx + r) holding centre (u_i + dy, v_i + dx) when on the grid:

    E-step   Q[i, s] = softmax_s( -t ||x_i - c_{j(i, s)}||^2 )          (B, N, lambda^2)
    M-step   c_j = sum_{i in R_j} Q[i, s(i, j)] x_i / max(sum_{i in R_j} Q[i, s(i, j)], 1e-16)

Centre j = (u, v) can only be a candidate of tokens whose cell lies within r of it, and those
tokens fill one rectangle of pixels R_j: rows ceil((u - r) H / h) .. ceil((u + r + 1) H / h) - 1
(clipped), columns likewise.  So the M-step kernel gives every centre one program that walks its
own rectangle and reads each token's weight from slot s(i, j) = (u - u_i + r) lambda + (v - v_i + r):
every output is written by exactly one program, no atomics.  Cost per iteration O(N lambda^2 C)
(E) + O(M |R| C) (M) instead of the official dense O(N M C) with a +1e16 mask.

**Top-k reconstruction** (eqs. 5.6-5.8).  One program per block of tokens holds the full row of
M weights W_i. = exp(-t (D_i. - min D_i.)) (D by the expansion ||x||^2 + ||c||^2 - 2 x . c, one
IEEE-fp32 GEMM tile per chunk of C), finds the k-th largest weight with multiplicity by k passes
of "largest value below the threshold" (ties at the k-th kept, as ``torch.topk`` + ``>=``),
zeroes the rest, normalises (L2 as the official code, or L1) and multiplies by the refined centres
C^ with a second GEMM.  Rows of M <= 4096 weights fit one program in the interpreter; on a GPU a
row of M = 784 (Segmenter) in fp32 is a large register tile, and the kernel has not been compiled
natively yet (no GPU was available): it may need tiling over M there.

The torch references sit beside the kernels: :func:`local_em_reference` (the same local
algorithm as batched GEMMs per cell, no N x M tensor) and :func:`topk_reconstruction_reference`
(the dense official formulation, stabilised).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._runtime import HAS_TRITON, register_kernel_module, require_float, triton_usable

register_kernel_module(__name__)

NORMS = ("l2", "l1")
MAX_CENTRES = 4096            # one program holds a row of M weights in the reconstruction kernel


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """All distance arithmetic runs in fp32 at least (fp64 stays fp64): squared norms overflow fp16."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def squared_distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """D_ij = ||x_i - c_j||^2 = ||x_i||^2 + ||c_j||^2 - 2 x_i . c_j for x (B, N, C), c (B, M, C),
    clamped at 0 (the expansion can round below it); (B, N, M) in x's dtype."""
    d = (x * x).sum(-1, keepdim=True) + (c * c).sum(-1)[:, None, :] - 2 * x @ c.transpose(1, 2)
    return d.clamp_min(0)


# ------------------------------------------------------------------------------ geometry
def initial_cells(grid: tuple[int, int], clusters: tuple[int, int], device=None) -> torch.Tensor:
    """l(i) of eq. (5.2): the h x w cell of every token of the H x W grid, (N,) int64, row-major.

    Token (y, x) gets cell (floor(y h / H), floor(x w / W)) in integer arithmetic: what nearest
    resizing of the h x w index image to H x W means.  ``F.interpolate(mode="nearest")``, which the
    official code calls, computes floor(y * (h / H)) in floating point and can land one cell lower
    at some sizes (e.g. H = 46, h = 28); the chapter's sizes agree."""
    (hh, ww), (h, w) = grid, clusters
    if h > hh or w > ww:
        raise ValueError(f"a {h}x{w} cluster grid is finer than the {hh}x{ww} token grid")
    u = torch.arange(hh, device=device) * h // hh
    v = torch.arange(ww, device=device) * w // ww
    return (u[:, None] * w + v[None, :]).flatten()


def cell_members(grid: tuple[int, int], clusters: tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens of every cell, padded to one length S: ``(members (M, S) int64, valid (M, S) bool)``.

    Cell (u, v) holds rows ceil(u H / h) .. ceil((u + 1) H / h) - 1 (the rows nearest resizing
    maps to u) and likewise columns, so S = ceil(H / h) ceil(W / w); padding slots point at token 0."""
    (hh, ww), (h, w) = grid, clusters
    cell = initial_cells(grid, clusters, device)
    order = torch.argsort(cell, stable=True)                                    # tokens grouped by cell
    counts = torch.bincount(cell, minlength=h * w)
    first = torch.cumsum(counts, 0) - counts                                    # (M,) start in ``order``
    slot = torch.arange(int(counts.max()), device=device)
    valid = slot[None, :] < counts[:, None]                                     # (M, S)
    members = order[(first[:, None] + slot[None, :]).clamp_max(hh * ww - 1)]
    return torch.where(valid, members, torch.zeros_like(members)), valid


def _check_em(x, c, grid, clusters, lam, t, iters):
    require_float("local_em", x=x, c=c)
    if x.ndim != 3 or c.ndim != 3 or x.shape[0] != c.shape[0] or x.shape[2] != c.shape[2]:
        raise ValueError(f"local_em: x must be (B, N, C) and c (B, M, C), got {tuple(x.shape)} and {tuple(c.shape)}")
    (hh, ww), (h, w) = grid, clusters
    if hh * ww != x.shape[1] or h * w != c.shape[1]:
        raise ValueError(f"local_em: a {hh}x{ww} token grid and {h}x{w} centres need N={hh * ww}, M={h * w}; "
                         f"got N={x.shape[1]}, M={c.shape[1]}")
    if h > hh or w > ww:
        raise ValueError(f"local_em: a {h}x{w} cluster grid is finer than the {hh}x{ww} token grid")
    if lam < 1 or lam % 2 == 0:
        raise ValueError(f"local_em: the neighbourhood lambda must be a positive odd number, got {lam}")
    if not t > 0 or iters < 1:
        raise ValueError(f"local_em: need t > 0 and iters >= 1, got t={t}, iters={iters}")


# ------------------------------------------------------------------------------ references
@functools.lru_cache(maxsize=64)
def _tile_plan(grid: tuple[int, int], clusters: tuple[int, int], lam: int, tile: int):
    """Index tensors of the tiled local EM (CPU; moved to the data's device by the caller).

    The h x w cell grid is cut into tile x tile blocks of cells.  A block's tokens form one pixel
    rectangle (cells are contiguous row / column ranges), padded to S tokens; its *halo* is the
    (tile + 2r)^2 cells that any of them may join (index M = a dummy zero centre off the grid).
    ``slot[b, s, k]`` says where token s's k-th candidate sits in its block's halo."""
    (hh, ww), (h, w), r = grid, clusters, lam // 2
    side = tile + 2 * r
    bands_u = [(u0, min(u0 + tile, h)) for u0 in range(0, h, tile)]
    bands_v = [(v0, min(v0 + tile, w)) for v0 in range(0, w, tile)]
    rows = lambda u0, u1: range(-(-u0 * hh // h), -(-u1 * hh // h))              # noqa: E731
    cols = lambda v0, v1: range(-(-v0 * ww // w), -(-v1 * ww // w))              # noqa: E731
    s_max = max(len(rows(*bu)) for bu in bands_u) * max(len(cols(*bv)) for bv in bands_v)
    tokens, valid, halo, slot, ok = [], [], [], [], []
    du = torch.arange(lam * lam) // lam - r
    dv = torch.arange(lam * lam) % lam - r
    for u0, u1 in bands_u:
        for v0, v1 in bands_v:
            ys, xs = torch.meshgrid(torch.tensor(list(rows(u0, u1))), torch.tensor(list(cols(v0, v1))), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            n_t = ys.numel()
            pad = s_max - n_t
            tokens.append(torch.cat([ys * ww + xs, torch.zeros(pad, dtype=torch.long)]))
            valid.append(torch.arange(s_max) < n_t)
            hu = torch.arange(u0 - r, u0 - r + side)
            hv = torch.arange(v0 - r, v0 - r + side)
            on = ((hu >= 0) & (hu < h))[:, None] & ((hv >= 0) & (hv < w))[None, :]
            halo.append(torch.where(on, hu[:, None] * w + hv[None, :], h * w).flatten())
            u, v = ys * h // hh, xs * w // ww                                   # each token's cell
            cu, cv = u[:, None] + du[None, :], v[:, None] + dv[None, :]         # (n_t, k2) candidates
            sl = (cu - (u0 - r)) * side + (cv - (v0 - r))
            good = (cu >= 0) & (cu < h) & (cv >= 0) & (cv < w)
            slot.append(torch.cat([sl, torch.zeros(pad, lam * lam, dtype=torch.long)]))
            ok.append(torch.cat([good, torch.zeros(pad, lam * lam, dtype=torch.bool)]))
    return (torch.stack(tokens), torch.stack(valid), torch.stack(halo), torch.stack(slot), torch.stack(ok))


def local_em_reference(x: torch.Tensor, c: torch.Tensor, grid: tuple[int, int], clusters: tuple[int, int],
                       lam: int = 5, t: float = 0.02, iters: int = 5, tile: int = 4) -> torch.Tensor:
    """kappa = ``iters`` local EM iterations in torch, from centres ``c`` (B, M, C); returns the
    centres, computed in fp32 (fp64 stays fp64).

    The kernels' idea in torch: cut the h x w cell grid into ``tile`` x ``tile`` blocks of cells
    (:func:`_tile_plan`).  A block's S tokens can only join the (tile + 2r)^2 centres of its halo,
    so one small dense GEMM per block, (S, C) @ (C, halo), holds every distance they need
    (||x||^2 + ||c||^2 - 2 x . c); each token then picks its lambda^2 slots from it (a gather),
    takes the softmax (5.3), and the M-step is the transposed GEMM per block, Q^T X, scatter-added
    over the blocks' halos (``index_add_``; halos overlap).  Work per iteration: ~N (tile + 2r)^2 C
    instead of N M C, in GEMMs large enough to run at full speed; never an N x M tensor.
    ``tile=1`` is the per-cell form (halo = the lambda^2 candidates)."""
    _check_em(x, c, grid, clusters, lam, t, iters)
    if tile < 1:
        raise ValueError(f"local_em_reference: tile must be >= 1, got {tile}")
    work = work_dtype(x)
    x, c = x.to(work), c.to(work)
    b, _, ch = x.shape
    m = clusters[0] * clusters[1]
    tokens, valid, halo, slot, ok = (v.to(x.device) for v in _tile_plan(tuple(grid), tuple(clusters), lam, tile))
    n_tiles, s_max, n_halo = tokens.shape[0], tokens.shape[1], halo.shape[1]
    live = valid[None, :, :, None].to(work)                                     # (1, T, S, 1)
    xt = x[:, tokens] * live                                                    # (B, T, S, C), padding 0
    x2 = (xt * xt).sum(-1, keepdim=True)                                        # (B, T, S, 1)
    slot_b = slot[None].expand(b, -1, -1, -1)                                   # (B, T, S, k2)
    for _ in range(iters):
        cand = torch.cat([c, c.new_zeros(b, 1, ch)], dim=1)[:, halo]            # (B, T, halo, C)
        c2 = (cand * cand).sum(-1)[:, :, None, :]                               # (B, T, 1, halo)
        d_all = x2 + c2 - 2 * xt @ cand.transpose(-1, -2)                       # (B, T, S, halo)
        d = d_all.gather(-1, slot_b).clamp_min(0)                               # (B, T, S, k2)
        q = (-t * d).masked_fill(~ok, float("-inf")).softmax(dim=-1)
        q = torch.where(ok, q, torch.zeros_like(q)) * live                      # padding rows -> 0
        q_halo = torch.zeros(b, n_tiles, s_max, n_halo, dtype=work, device=x.device).scatter_(-1, slot_b, q)
        per_tile = torch.cat([q_halo.transpose(-1, -2) @ xt, q_halo.sum(2)[..., None]], dim=-1)  # (B, T, halo, C+1)
        sums = x.new_zeros(b, m + 1, ch + 1).index_add_(1, halo.flatten(), per_tile.reshape(b, -1, ch + 1))
        c = sums[:, :m, :ch] / sums[:, :m, ch:].clamp_min(1e-16)
    return c


def _check_rec(x_a, c_a, c_hat, t, k, norm):
    require_float("topk_reconstruction", x_a=x_a, c_a=c_a)
    if not isinstance(c_hat, torch.Tensor) or not c_hat.is_floating_point():
        raise TypeError("topk_reconstruction: c_hat must be a floating-point tensor")
    if x_a.ndim != 3 or c_a.ndim != 3 or c_hat.ndim != 3:
        raise ValueError("topk_reconstruction: x_a (B, N, C), c_a (B, M, C) and c_hat (B, M, C') must be 3-D, got "
                         f"{tuple(x_a.shape)}, {tuple(c_a.shape)}, {tuple(c_hat.shape)}")
    if x_a.shape[0] != c_a.shape[0] or x_a.shape[2] != c_a.shape[2] or c_hat.shape[:2] != c_a.shape[:2]:
        raise ValueError(f"topk_reconstruction: shapes do not match: x_a {tuple(x_a.shape)}, c_a {tuple(c_a.shape)}, "
                         f"c_hat {tuple(c_hat.shape)}")
    if c_hat.device != x_a.device:
        raise ValueError("topk_reconstruction: c_hat must be on x_a's device")
    if norm not in NORMS:
        raise ValueError(f"topk_reconstruction: norm must be 'l2' (official code) or 'l1' (convex), got {norm!r}")
    if k < 1 or not t > 0:
        raise ValueError(f"topk_reconstruction: need k >= 1 and t > 0, got k={k}, t={t}")


def topk_weights_reference(x_a, c_a, t: float = 0.02, k: int = 20, norm: str = "l2", stabilise: bool = True):
    """Eqs. (5.6)-(5.7), dense as in the official code: W (B, N, M) in fp32 (fp64 stays fp64)."""
    work = work_dtype(x_a)
    d = squared_distances(x_a.to(work), c_a.to(work))
    if stabilise:
        d = d - d.amin(dim=-1, keepdim=True)
    wgt = torch.exp(-t * d)
    kth = wgt.topk(min(k, wgt.shape[-1]), dim=-1).values[..., -1:]
    wgt = torch.where(wgt >= kth, wgt, torch.zeros_like(wgt))                   # ties at the k-th kept
    if norm == "l2":
        return F.normalize(wgt, p=2, dim=-1, eps=1e-12)
    return wgt / wgt.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def topk_reconstruction_reference(x_a, c_a, c_hat, t: float = 0.02, k: int = 20, norm: str = "l2"):
    """Eq. (5.8) with the stabilised weights of (5.6)-(5.7): (B, N, C') in c_hat's dtype."""
    _check_rec(x_a, c_a, c_hat, t, k, norm)
    wgt = topk_weights_reference(x_a, c_a, t, k, norm)
    return (wgt @ c_hat.to(wgt.dtype)).to(c_hat.dtype)


# ------------------------------------------------------------------------------ Triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _em_assign_kernel(X, CEN, Q, N, C, H, W, h, w, t,
                          sxb, sxn, sxc, scb, scm, scc, sqb, sqn, sqs,
                          LAM: tl.constexpr, S2: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr):
        """E-step for BN tokens: Q[i, s] = softmax_s(-t ||x_i - c_j(i,s)||^2) over the on-grid slots."""
        pid_b, pid_n = tl.program_id(0), tl.program_id(1)
        i = pid_n * BN + tl.arange(0, BN)                                       # (BN,) tokens
        tok_ok = i < N
        u, v = (i // W) * h // H, (i % W) * w // W                              # each token's cell
        s = tl.arange(0, S2)                                                    # (S2,) slots
        r = LAM // 2
        cu = u[:, None] + (s // LAM)[None, :] - r                               # (BN, S2) candidate cell
        cv = v[:, None] + (s % LAM)[None, :] - r
        ok = tok_ok[:, None] & (s < LAM * LAM)[None, :] & (cu >= 0) & (cu < h) & (cv >= 0) & (cv < w)
        j = tl.where(ok, cu * w + cv, 0)
        d = tl.zeros((BN, S2), dtype=tl.float32)
        for c0 in range(0, C, BC):
            cc = c0 + tl.arange(0, BC)
            c_ok = cc < C
            xv = tl.load(X + pid_b * sxb + i[:, None] * sxn + cc[None, :] * sxc,
                         mask=tok_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)          # (BN, BC)
            cen = tl.load(CEN + pid_b * scb + j[:, :, None] * scm + cc[None, None, :] * scc,
                          mask=ok[:, :, None] & c_ok[None, None, :], other=0.0).to(tl.float32)    # (BN, S2, BC)
            diff = xv[:, None, :] - cen
            d += tl.sum(diff * diff, axis=2)
        logit = tl.where(ok, -t * d, float("-inf"))
        mx = tl.max(tl.where(ok, logit, -1e30), axis=1)
        mx = tl.where(mx > -1e30, mx, 0.0)                                      # padding rows: no overflow
        e = tl.where(ok, tl.exp(tl.where(ok, logit, 0.0) - mx[:, None]), 0.0)
        q = e / tl.maximum(tl.sum(e, axis=1), 1e-30)[:, None]
        tl.store(Q + pid_b * sqb + i[:, None] * sqn + s[None, :] * sqs, q,
                 mask=tok_ok[:, None] & (s < LAM * LAM)[None, :])

    @triton.jit
    def _em_update_kernel(X, Q, CEN, C, H, W, h, w,
                          sxb, sxn, sxc, sqb, sqn, sqs, scb, scm, scc,
                          LAM: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
        """M-step for one centre and BC channels: walk the pixel rectangle R_j, read each token's
        weight from slot s(i, j), accumulate sum Q x and sum Q; one writer per output, no atomics."""
        pid_b, jc, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        r = LAM // 2
        cu, cv = jc // w, jc % w
        y0 = (tl.maximum(cu - r, 0) * H + h - 1) // h                           # first row of R_j
        y1 = (tl.minimum(cu + r + 1, h) * H + h - 1) // h                       # one past its last
        x0 = (tl.maximum(cv - r, 0) * W + w - 1) // w
        x1 = (tl.minimum(cv + r + 1, w) * W + w - 1) // w
        rw = x1 - x0
        npix = (y1 - y0) * rw
        cc = pid_c * BC + tl.arange(0, BC)
        c_ok = cc < C
        acc = tl.zeros((BC,), dtype=tl.float32)
        den = tl.zeros((1,), dtype=tl.float32)
        for p0 in range(0, npix, BP):
            p = p0 + tl.arange(0, BP)
            p_ok = p < npix
            y, xx = y0 + p // tl.maximum(rw, 1), x0 + p % tl.maximum(rw, 1)
            i = y * W + xx
            slot = (cu - y * h // H + r) * LAM + (cv - xx * w // W + r)
            qv = tl.load(Q + pid_b * sqb + i * sqn + slot * sqs, mask=p_ok, other=0.0)          # (BP,)
            xv = tl.load(X + pid_b * sxb + i[:, None] * sxn + cc[None, :] * sxc,
                         mask=p_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)       # (BP, BC)
            acc += tl.sum(qv[:, None] * xv, axis=0)
            den += tl.sum(qv, axis=0)
        out = acc / tl.maximum(den, 1e-16)
        tl.store(CEN + pid_b * scb + jc * scm + cc * scc, out, mask=c_ok)

    @triton.jit
    def _topk_reconstruct_kernel(XA, CA, CH, OUT, N, M, C, CO, t, K,
                                 sxb, sxn, sxc, scb, scm, scc, shb, shm, shc, sob, son, soc,
                                 L2: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
        """Eqs. (5.6)-(5.8) for BN tokens: a full row of M weights per token, the k-th largest by k
        threshold passes, normalise, then (BN, M) @ (M, C') in BC-wide chunks."""
        pid_b, pid_n = tl.program_id(0), tl.program_id(1)
        i = pid_n * BN + tl.arange(0, BN)
        tok_ok = i < N
        jm = tl.arange(0, BM)
        m_ok = jm < M
        dot = tl.zeros((BN, BM), dtype=tl.float32)
        x2 = tl.zeros((BN,), dtype=tl.float32)
        c2 = tl.zeros((BM,), dtype=tl.float32)
        for c0 in range(0, C, BC):
            cc = c0 + tl.arange(0, BC)
            c_ok = cc < C
            xv = tl.load(XA + pid_b * sxb + i[:, None] * sxn + cc[None, :] * sxc,
                         mask=tok_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)          # (BN, BC)
            ct = tl.load(CA + pid_b * scb + jm[None, :] * scm + cc[:, None] * scc,
                         mask=m_ok[None, :] & c_ok[:, None], other=0.0).to(tl.float32)            # (BC, BM)
            dot += tl.dot(xv, ct, input_precision="ieee")
            x2 += tl.sum(xv * xv, axis=1)
            c2 += tl.sum(ct * ct, axis=0)
        d = tl.maximum(x2[:, None] + c2[None, :] - 2.0 * dot, 0.0)
        d = tl.where(m_ok[None, :], d, float("inf"))
        d = d - tl.min(d, axis=1)[:, None]                                      # stabilised: row min -> 0
        wgt = tl.where(m_ok[None, :], tl.exp(-t * d), float("-inf"))
        thr = tl.full((BN,), float("inf"), dtype=tl.float32)
        for _ in range(K):                                                      # k-th largest, ties kept
            cnt = tl.sum((wgt >= thr[:, None]).to(tl.int32), axis=1)
            below = tl.max(tl.where(wgt < thr[:, None], wgt, float("-inf")), axis=1)
            thr = tl.where(cnt < K, below, thr)
        wgt = tl.where((wgt >= thr[:, None]) & m_ok[None, :], wgt, 0.0)
        if L2:
            scale = 1.0 / tl.maximum(tl.sqrt(tl.sum(wgt * wgt, axis=1)), 1e-12)
        else:
            scale = 1.0 / tl.maximum(tl.sum(wgt, axis=1), 1e-12)
        wgt = wgt * scale[:, None]
        for c0 in range(0, CO, BC):
            cc = c0 + tl.arange(0, BC)
            c_ok = cc < CO
            hv = tl.load(CH + pid_b * shb + jm[:, None] * shm + cc[None, :] * shc,
                         mask=m_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)           # (BM, BC)
            out = tl.dot(wgt, hv, input_precision="ieee")
            tl.store(OUT + pid_b * sob + i[:, None] * son + cc[None, :] * soc,
                     out.to(OUT.dtype.element_ty), mask=tok_ok[:, None] & c_ok[None, :])


BN_EM, BC_EM, BP_EM = 16, 32, 32          # E-step tokens x channels; M-step pixels x channels
BN_REC, BC_REC = 16, 32


def local_em_triton(x, c, grid, clusters, lam=5, t=0.02, iters=5):
    """kappa iterations, two launches each (E-step over token blocks, M-step over centres)."""
    _check_em(x, c, grid, clusters, lam, t, iters)
    if x.dtype == torch.float64:
        raise TypeError("local_em_triton: fp64 is not supported by the kernel (use the reference)")
    (hh, ww), (h, w) = grid, clusters
    b, n, ch = x.shape
    m, s2 = h * w, triton.next_power_of_2(lam * lam)
    q = torch.empty(b, n, lam * lam, device=x.device, dtype=torch.float32)
    cur = c.to(torch.float32).contiguous()
    for _ in range(iters):
        _em_assign_kernel[(b, triton.cdiv(n, BN_EM))](
            x, cur, q, n, ch, hh, ww, h, w, float(t), *x.stride(), *cur.stride(), *q.stride(),
            LAM=lam, S2=s2, BN=BN_EM, BC=BC_EM)
        nxt = torch.empty_like(cur)
        _em_update_kernel[(b, m, triton.cdiv(ch, BC_EM))](
            x, q, nxt, ch, hh, ww, h, w, *x.stride(), *q.stride(), *nxt.stride(),
            LAM=lam, BP=BP_EM, BC=BC_EM)
        cur = nxt
    return cur


def topk_reconstruction_triton(x_a, c_a, c_hat, t=0.02, k=20, norm="l2"):
    """One launch over token blocks; weights never leave the program."""
    _check_rec(x_a, c_a, c_hat, t, k, norm)
    b, n, ch = x_a.shape
    m, co = c_hat.shape[1], c_hat.shape[2]
    if m > MAX_CENTRES:
        raise ValueError(f"topk_reconstruction_triton: one program holds a row of M weights, M={m} > {MAX_CENTRES}")
    if x_a.dtype == torch.float64 or c_hat.dtype == torch.float64:
        raise TypeError("topk_reconstruction_triton: fp64 is not supported by the kernel (use the reference)")
    out = torch.empty(b, n, co, device=x_a.device, dtype=c_hat.dtype)
    _topk_reconstruct_kernel[(b, triton.cdiv(n, BN_REC))](
        x_a, c_a, c_hat, out, n, m, ch, co, float(t), int(min(k, m)), *x_a.stride(), *c_a.stride(),
        *c_hat.stride(), *out.stride(), L2=norm == "l2", BN=BN_REC, BM=max(16, triton.next_power_of_2(m)),
        BC=BC_REC)
    return out


# ------------------------------------------------------------------------------ custom ops
def _kernel_ok(*tensors) -> bool:
    return triton_usable(*tensors) and all(t.dtype in (torch.float32, torch.float16) or
                                           (t.is_cuda and t.dtype == torch.bfloat16) for t in tensors)


@torch.library.custom_op("hrvit_edu::local_em", mutates_args=())
def local_em(x: torch.Tensor, c: torch.Tensor, grid: list[int], clusters: list[int], lam: int = 5,
             t: float = 0.02, iters: int = 5) -> torch.Tensor:
    """kappa local EM iterations from centres ``c``: the Triton kernels when usable, else
    :func:`local_em_reference`.  Returns fp32 centres (fp64 for fp64 input)."""
    grid, clusters = tuple(grid), tuple(clusters)
    if _kernel_ok(x, c):
        return local_em_triton(x, c, grid, clusters, lam, t, iters)
    return local_em_reference(x, c, grid, clusters, lam, t, iters).contiguous()


@local_em.register_fake
def _(x, c, grid, clusters, lam=5, t=0.02, iters=5):
    _check_em(x, c, tuple(grid), tuple(clusters), lam, t, iters)
    return c.new_empty(c.shape, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


@torch.library.custom_op("hrvit_edu::topk_reconstruction", mutates_args=())
def topk_reconstruction(x_a: torch.Tensor, c_a: torch.Tensor, c_hat: torch.Tensor, t: float = 0.02, k: int = 20,
                        norm: str = "l2") -> torch.Tensor:
    """Eqs. (5.6)-(5.8), stabilised: the Triton kernel when usable (M <= 4096), else the dense
    reference."""
    if _kernel_ok(x_a, c_a, c_hat) and c_hat.shape[1] <= MAX_CENTRES:
        return topk_reconstruction_triton(x_a, c_a, c_hat, t, k, norm)
    return topk_reconstruction_reference(x_a, c_a, c_hat, t, k, norm).contiguous()


@topk_reconstruction.register_fake
def _(x_a, c_a, c_hat, t=0.02, k=20, norm="l2"):
    _check_rec(x_a, c_a, c_hat, t, k, norm)
    return c_hat.new_empty(x_a.shape[0], x_a.shape[1], c_hat.shape[2])
