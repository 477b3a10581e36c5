"""Triton answers to the kernel questions, each with one bug (and one correct kernel), shared by
the grading tests."""
import torch
import triton
import triton.language as tl


@triton.jit
def l2_kernel_no_eps(X, Y, n_cols, stride_x, stride_y, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    y = x / tl.sqrt(tl.sum(x * x, axis=0))
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def l2_kernel_l1(X, Y, n_cols, stride_x, stride_y, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    y = x / tl.maximum(tl.sum(tl.abs(x), axis=0), eps)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def l2_kernel_ok(X, Y, n_cols, stride_x, stride_y, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    y = x / tl.maximum(tl.sqrt(tl.sum(x * x, axis=0)), eps)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


def l2_launcher(kernel, out_dtype=None):
    def l2_normalize_rows(x):
        x = x.contiguous()
        y = torch.empty_like(x, dtype=out_dtype or x.dtype)
        kernel[(x.shape[0],)](x, y, x.shape[1], x.stride(0), y.stride(0), 1e-6,
                              BLOCK=triton.next_power_of_2(max(x.shape[1], 16)))
        return y
    return l2_normalize_rows


@triton.jit
def right_kernel_no_bias(X, BW, BB, Y, M, P: tl.constexpr, BLOCK_M: tl.constexpr, PP: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, PP)
    xmask = (rows[:, None] < M) & (cols[None, :] < P)
    x = tl.load(X + rows[:, None] * P + cols[None, :], mask=xmask, other=0.0).to(tl.float32)
    wmask = (cols[:, None] < P) & (cols[None, :] < P)
    bw = tl.load(BW + cols[:, None] * P + cols[None, :], mask=wmask, other=0.0).to(tl.float32)
    y = tl.dot(x, tl.trans(bw), input_precision="ieee")
    tl.store(Y + rows[:, None] * P + cols[None, :], y.to(Y.dtype.element_ty), mask=xmask)


def right_launcher(x, B, b_B):
    x = x.contiguous()
    m, p = x.shape
    y = torch.empty_like(x)
    right_kernel_no_bias[(triton.cdiv(m, 16),)](x, B.contiguous(), b_B.contiguous(), y, m, P=p, BLOCK_M=16,
                                                 PP=max(16, triton.next_power_of_2(p)))
    return y


@triton.jit
def _dx_tile(N, C, W, H, BN: tl.constexpr, BC: tl.constexpr):
    """The dX tile every scatter answer below owns: channels, (w, h, b) of its rows n, and the mask."""
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    return c, n % W, (n // W) % H, n // (W * H), (n[:, None] < N) & (c[None, :] < C)


@triton.jit
def scatter_kernel_first_copy(DA, DX, N, C, G, W, H, sxb, sxc, sxh, sxw, P: tl.constexpr, S: tl.constexpr,
                              NREP: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr):
    """Takes only the first copy r = (h + S) mod H of each input row: forgets that the circular
    padding repeats rows, whose gradients must be summed."""
    c, w, h, b, ok = _dx_tile(N, C, W, H, BN, BC)
    r = (h + S) % H
    m = (b * G + r // P) * W + w
    val = tl.load(DA + m[:, None] * (C * P) + c[None, :] * P + (r % P)[:, None], mask=ok, other=0.0)
    tl.store(DX + b[:, None] * sxb + c[None, :] * sxc + h[:, None] * sxh + w[:, None] * sxw, val, mask=ok)


@triton.jit
def scatter_kernel_atomic(DA, DX, N, C, G, W, H, sxb, sxc, sxh, sxw, P: tl.constexpr, S: tl.constexpr,
                          NREP: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr):
    """Scatters from dX's side with atomic adds, one copy per loop step: correct sums on a zeroed
    buffer, but several programs may own one element (and the grader's buffer is not zeroed)."""
    c, w, h, b, ok = _dx_tile(N, C, W, H, BN, BC)
    for j in range(NREP):
        r = (h + S) % H + j * H
        m = (b * G + r // P) * W + w
        val = tl.load(DA + m[:, None] * (C * P) + c[None, :] * P + (r % P)[:, None], mask=ok & (r < G * P)[:, None],
                      other=0.0)
        tl.atomic_add(DX + b[:, None] * sxb + c[None, :] * sxc + h[:, None] * sxh + w[:, None] * sxw, val, mask=ok)


@triton.jit
def scatter_kernel_fp16_acc(DA, DX, N, C, G, W, H, sxb, sxc, sxh, sxw, P: tl.constexpr, S: tl.constexpr,
                            NREP: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr):
    """Correct indexing, but accumulates in the dtype of dA (fp16 loses small terms next to large ones)."""
    c, w, h, b, ok = _dx_tile(N, C, W, H, BN, BC)
    acc = tl.zeros((BN, BC), dtype=DX.dtype.element_ty)
    for j in range(NREP):
        r = (h + S) % H + j * H
        m = (b * G + r // P) * W + w
        acc += tl.load(DA + m[:, None] * (C * P) + c[None, :] * P + (r % P)[:, None], mask=ok & (r < G * P)[:, None],
                       other=0.0)
    tl.store(DX + b[:, None] * sxb + c[None, :] * sxc + h[:, None] * sxh + w[:, None] * sxw, acc, mask=ok)


def scatter_launcher(kernel):
    def operand_grad(da, shape, p, s):
        b, c, h, w = shape
        g = -(-h // p)
        n = b * h * w
        dx = torch.zeros(shape, dtype=da.dtype)
        kernel[(triton.cdiv(n, 16), triton.cdiv(c, 16))](da, dx, n, c, g, w, h, *dx.stride(), P=p, S=s % h,
                                                         NREP=-(-g * p // h), BN=16, BC=16)
        return dx
    return operand_grad


@triton.jit
def window_logits_kernel_clamped(QT, K, BLOC, OUT, L, H, W, D, KS: tl.constexpr, BM: tl.constexpr, DP: tl.constexpr):
    """Shifts border windows inward (clamps the neighbour, as neighbourhood attention does) instead
    of masking the off-map slots."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    g = tl.program_id(1)
    dd = tl.arange(0, DP)
    r, c = rows // W, rows % W
    dmask = dd[None, :] < D
    base = g * L * D
    qt = tl.load(QT + base + rows[:, None] * D + dd[None, :], mask=(rows[:, None] < L) & dmask,
                 other=0.0).to(tl.float32)
    for z in tl.static_range(KS * KS):
        rr = tl.minimum(tl.maximum(r + z // KS - KS // 2, 0), H - 1)
        cc = tl.minimum(tl.maximum(c + z % KS - KS // 2, 0), W - 1)
        kz = tl.load(K + base + (rr * W + cc)[:, None] * D + dd[None, :], mask=(rows[:, None] < L) & dmask,
                     other=0.0).to(tl.float32)
        lz = tl.sum(qt * kz, axis=1) + tl.load(BLOC + z).to(tl.float32)
        tl.store(OUT + g * L * KS * KS + rows * KS * KS + z, lz, mask=rows < L)


def window_logits_launcher(qt, k, b_loc, h, w, ks):
    g, n, d = qt.shape
    out = torch.empty(g, n, ks * ks, dtype=torch.float32)
    window_logits_kernel_clamped[(triton.cdiv(n, 16), g)](qt.contiguous(), k.contiguous(), b_loc.contiguous(), out,
                                                          n, h, w, d, KS=ks, BM=16,
                                                          DP=max(16, triton.next_power_of_2(d)))
    return out


@triton.jit
def column_lse_kernel_no_max(X, K, OUT, N, C, M, BN: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    """Sums exp(A) without a running max: right for small logits, inf once a logit passes ~88."""
    b = tl.program_id(0)
    m = tl.program_id(1) * BM + tl.arange(0, BM)
    run_sum = tl.zeros((BM,), dtype=tl.float32)
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        a = tl.zeros((BN, BM), dtype=tl.float32)
        for c0 in range(0, C, BC):
            c = c0 + tl.arange(0, BC)
            xt = tl.load(X + b * C * N + c[None, :] * N + n[:, None], mask=(n[:, None] < N) & (c[None, :] < C),
                         other=0.0).to(tl.float32)
            kt = tl.load(K + m[None, :] * C + c[:, None], mask=(c[:, None] < C) & (m[None, :] < M),
                         other=0.0).to(tl.float32)
            a += tl.dot(xt, kt, input_precision="ieee")
        run_sum += tl.sum(tl.where(n[:, None] < N, tl.exp(a), 0.0), axis=0)
    tl.store(OUT + b * M + m, tl.log(run_sum), mask=m < M)


def column_lse_launcher(x, k):
    b, c, n = x.shape
    m = k.shape[0]
    out = torch.empty(b, m, dtype=torch.float32)
    column_lse_kernel_no_max[(b, triton.cdiv(m, 16))](x.contiguous(), k.contiguous(), out, n, c, m, BN=16, BM=16,
                                                      BC=16)
    return out


@triton.jit
def em_assign_kernel_on_grid_only(X, CEN, Q, N, C, H, W, h, w, t, LAM: tl.constexpr, S2: tl.constexpr,
                                  BN: tl.constexpr, BC: tl.constexpr):
    """The local E-step, storing only the on-grid slots (the off-grid ones keep whatever Q held)."""
    b = tl.program_id(0)
    i = tl.program_id(1) * BN + tl.arange(0, BN)
    tok = i < N
    u, v = (i // W) * h // H, (i % W) * w // W
    s = tl.arange(0, S2)
    cu = u[:, None] + (s // LAM)[None, :] - LAM // 2
    cv = v[:, None] + (s % LAM)[None, :] - LAM // 2
    ok = tok[:, None] & (s < LAM * LAM)[None, :] & (cu >= 0) & (cu < h) & (cv >= 0) & (cv < w)
    j = tl.where(ok, cu * w + cv, 0)
    d = tl.zeros((BN, S2), dtype=tl.float32)
    for c0 in range(0, C, BC):
        cc = c0 + tl.arange(0, BC)
        xv = tl.load(X + b * N * C + i[:, None] * C + cc[None, :], mask=tok[:, None] & (cc < C)[None, :],
                     other=0.0).to(tl.float32)
        cen = tl.load(CEN + b * h * w * C + j[:, :, None] * C + cc[None, None, :],
                      mask=ok[:, :, None] & (cc < C)[None, None, :], other=0.0).to(tl.float32)
        d += tl.sum((xv[:, None, :] - cen) * (xv[:, None, :] - cen), axis=2)
    logit = tl.where(ok, -t * d, -1e30)
    e = tl.where(ok, tl.exp(logit - tl.max(logit, axis=1)[:, None]), 0.0)
    q = e / tl.maximum(tl.sum(e, axis=1), 1e-30)[:, None]
    tl.store(Q + b * N * LAM * LAM + i[:, None] * LAM * LAM + s[None, :], q, mask=ok)


def em_assign_launcher(kernel):
    def em_assign(x, c, grid, clusters, lam, t):
        b, n, ch = x.shape
        q = torch.zeros(b, n, lam * lam, dtype=torch.float32)
        kernel[(b, triton.cdiv(n, 16))](x, c, q, n, ch, grid[0], grid[1], clusters[0], clusters[1], float(t),
                                        LAM=lam, S2=32, BN=16, BC=16)
        return q
    return em_assign
