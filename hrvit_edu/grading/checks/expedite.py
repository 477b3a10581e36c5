"""Questions of ``exercises/05_expedite.ipynb``: the locality mask from the grid mapping, one EM
iteration, the stabilised top-k reconstruction weights, the local E-step as a Triton kernel, and
a "what happens if" question on where to cluster.  The package's expedite pieces, which the
answers may not call, are used here only as references."""
from __future__ import annotations

import torch

from ...kernels.token_clustering import topk_weights_reference
from ..compare import assert_matches
from ..core import Check, CheckFailed, Question, hidden_rng, register, require_triton

_OWN = "hrvit_edu.grading.checks.expedite"
# Everything in the package that computes an expedite piece: none of it may be called by an answer.
_EXPEDITE = ("hrvit_edu.models.expedite", "hrvit_edu.kernels.token_clustering", _OWN)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ references
def locality_reference(grid, clusters, lam):
    (hh, ww), (h, w), r = grid, clusters, lam // 2
    u = (torch.arange(hh) * h // hh)[:, None].expand(hh, ww).flatten()
    v = (torch.arange(ww) * w // ww)[None, :].expand(hh, ww).flatten()
    cu = torch.arange(h).repeat_interleave(w)
    cv = torch.arange(w).repeat(h)
    return ((u[:, None] - cu[None, :]).abs() <= r) & ((v[:, None] - cv[None, :]).abs() <= r)


def em_reference(x, c, allowed, t):
    d = ((x[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)
    q = (-t * d).masked_fill(~allowed, float("-inf")).softmax(-1)
    return q, (q.transpose(1, 2) @ x) / q.sum(1).clamp_min(1e-16)[..., None]


def block_macs(n, c):
    return 12 * n * c * c + 2 * n * n * c


def macs_fraction_reference(depth, alpha, n, m, c):
    return (alpha * block_macs(n + 1, c) + (depth - alpha) * block_macs(m + 1, c)) / (depth * block_macs(n + 1, c))


# ------------------------------------------------------------------------------ 1. locality mask
def _loc_check(fn, grid, clusters, lam, hint):
    got = fn(grid, clusters, lam)
    want = locality_reference(grid, clusters, lam)
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
        raise CheckFailed(f"return a torch.bool tensor, got {type(got).__name__} "
                          f"{getattr(got, 'dtype', '')}")
    if tuple(got.shape) != tuple(want.shape):
        raise CheckFailed(f"expected shape (N, M) = {tuple(want.shape)} for {grid} -> {clusters}, "
                          f"got {tuple(got.shape)}")
    bad = (got != want).nonzero()
    if len(bad):
        i, j = (int(v) for v in bad[0])
        raise CheckFailed(f"{hint} {grid[0]}x{grid[1]} -> {clusters[0]}x{clusters[1]}, lambda={lam}: "
                          f"{len(bad)} entries wrong, first token {i} (row {i // grid[1]}, col {i % grid[1]}), "
                          f"centre {j}: expected {bool(want[i, j])}")


def _loc_hidden(fn):
    rng = hidden_rng(70)
    for _ in range(3):
        hh, ww = rng.randint(2, 20), rng.randint(2, 20)
        _loc_check(fn, (hh, ww), (rng.randint(1, hh), rng.randint(1, ww)), rng.choice((1, 3, 5, 7)), "")


register(Question("expedite.locality", "the locality mask from the grid mapping, (5.2)", "locality_mask", (
    Check("cells of equal size", 1, lambda fn: _loc_check(
        fn, (8, 8), (4, 4), 3, "row-major tokens and centres; |u_i - u_j| <= r and |v_i - v_j| <= r, "
        "r = lambda // 2.")),
    Check("a non-integer ratio", 1, lambda fn: _loc_check(
        fn, (10, 7), (7, 3), 3, "token (y, x) is in cell (floor(y h / H), floor(x w / W)): integer floor division, "
        "not rounding and not the pooling bins.")),
    Check("lambda = 1 and lambda wider than the grid", 1, lambda fn: (_loc_check(
        fn, (6, 9), (3, 4), 1, "lambda = 1: a token may join its own cell's centre only."), _loc_check(
        fn, (5, 5), (2, 3), 9, "a neighbourhood wider than the grid allows every centre."))),
    Check("hidden sizes", 1, _loc_hidden),
), off_limits=_EXPEDITE))


# ------------------------------------------------------------------------------ 2. one EM iteration
def _em_inputs(b, n, m, c, seed, scale=1.0):
    g = _gen(seed)
    x = torch.randn(b, n, c, generator=g, dtype=torch.float64) * scale
    cen = torch.randn(b, m, c, generator=g, dtype=torch.float64) * scale
    allowed = torch.rand(n, m, generator=g) < 0.6
    allowed[torch.arange(n), torch.randint(0, m, (n,), generator=g)] = True     # every token may join one
    return x, cen, allowed


def _em_check(fn, b, n, m, c, t, seed, hint, scale=1.0, orphan=False):
    x, cen, allowed = _em_inputs(b, n, m, c, seed, scale)
    if orphan:                                       # centre 0: no token may join it
        allowed[:, 0] = False
        allowed[torch.arange(n), 1 + torch.arange(n) % (m - 1)] = True
    got = fn(x.clone(), cen.clone(), allowed.clone(), t)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise CheckFailed(f"return the pair (Q, C_new), got {type(got).__name__}")
    q_want, c_want = em_reference(x, cen, allowed, t)
    what = f"B={b}, N={n}, M={m}, C={c}, t={t:g}" + (", features x{:g}".format(scale) if scale != 1 else "")
    assert_matches(got[0], q_want, atol=1e-9, rtol=1e-7, what=f"Q for {what}", hint=hint)
    assert_matches(got[1], c_want, atol=1e-9, rtol=1e-7, what=f"the new centres for {what}", hint=hint)


def _em_hidden(fn):
    rng = hidden_rng(71)
    for _ in range(3):
        _em_check(fn, rng.randint(1, 3), rng.randint(2, 30), rng.randint(2, 12), rng.randint(1, 9),
                  rng.choice((0.02, 0.3, 1.0, 4.0)), rng.randrange(10 ** 6), "")


register(Question("expedite.em_step", "one EM iteration of the clustering layer, (5.3)-(5.4)", "em_iteration", (
    Check("small features", 1, lambda fn: _em_check(
        fn, 2, 12, 5, 4, 0.5, 0, "E-step: softmax over the allowed centres of -t D (t multiplies); M-step: the "
        "Q-weighted mean of the tokens, per centre")),
    Check("features whose exponentials underflow", 1, lambda fn: _em_check(
        fn, 1, 10, 4, 3, 2.0, 1, "exp(-t D) is 0 in float64 once t D > ~745: subtract each row's largest logit "
        "first (a softmax does it)", scale=30.0)),
    Check("a centre no token may join", 1, lambda fn: _em_check(
        fn, 1, 9, 4, 3, 0.5, 2, "divide by max(sum_i Q_ij, 1e-16): an unreachable centre becomes 0, not NaN",
        orphan=True)),
    Check("hidden sizes", 1, _em_hidden),
), off_limits=_EXPEDITE))


# ------------------------------------------------------------------------------ 3. top-k weights
def _tk_check(fn, b, n, m, c, t, k, norm, seed, hint, scale=1.0, ties=False):
    g = _gen(seed)
    xa = torch.randn(b, n, c, generator=g, dtype=torch.float64) * scale
    ca = torch.randn(b, m, c, generator=g, dtype=torch.float64) * scale
    if ties:                                         # centres 1..3 at one place: a tie across the k-th weight
        ca[:, 1:4] = ca[:, :1] + 0.5                 # the three second-nearest centres of every token
        xa[:, :, :] = ca[:, :1] + 0.01 * torch.randn(b, n, c, generator=g, dtype=torch.float64)
    got = fn(xa.clone(), ca.clone(), t, k, norm)
    assert_matches(got, topk_weights_reference(xa, ca, t, k, norm), atol=1e-9, rtol=1e-7,
                   what=f"W for N={n}, M={m}, t={t:g}, k={k}, norm {norm!r}" + (", features x{:g}".format(scale)
                                                                                 if scale != 1 else ""), hint=hint)


def _tk_hidden(fn):
    rng = hidden_rng(72)
    for _ in range(3):
        m = rng.randint(1, 15)
        _tk_check(fn, rng.randint(1, 2), rng.randint(1, 20), m, rng.randint(1, 8), rng.choice((0.05, 0.5, 2.0)),
                  rng.randint(1, 20), rng.choice(("l1", "l2")), rng.randrange(10 ** 6), "")


register(Question("expedite.topk_weights", "the stabilised top-k reconstruction weights, (5.6)-(5.7)", "topk_weights", (
    Check("L2 rows (the official code)", 1, lambda fn: _tk_check(
        fn, 2, 10, 8, 4, 0.5, 3, "l2", 0, "keep the k largest weights of each row, zero the rest, divide by the "
        "row's L2 norm")),
    Check("L1 rows, k > M", 1, lambda fn: _tk_check(
        fn, 1, 7, 5, 3, 0.5, 9, "l1", 1, "with k > M every centre is kept; 'l1' divides by the row sum")),
    Check("ties at the k-th weight", 1, lambda fn: _tk_check(
        fn, 1, 6, 7, 3, 0.5, 2, "l1", 2, "keep every weight >= the k-th largest (ties kept), as topk + >= does",
        ties=True)),
    Check("distances that underflow", 1, lambda fn: _tk_check(
        fn, 1, 8, 6, 5, 0.02, 3, "l2", 3, "subtract each row's smallest distance before exp: exp(-0.02 D) is 0 in "
        "float64 for D > ~37000, and a row of zeros cannot be normalised", scale=200.0)),
    Check("hidden sizes", 1, _tk_hidden),
), off_limits=_EXPEDITE))


# ------------------------------------------------------------------------------ 4. the E-step kernel
def slots_reference(x, cen, grid, clusters, lam, t):
    """Q (B, N, lambda^2) in float32: slot s = (du + r) lambda + (dv + r); 0 off the grid."""
    allowed = locality_reference(grid, clusters, lam)
    q_dense, _ = em_reference(x.double(), cen.double(), allowed, t)
    (hh, ww), (h, w), r = grid, clusters, lam // 2
    n = hh * ww
    out = torch.zeros(x.shape[0], n, lam * lam, dtype=torch.float64)
    u = torch.arange(n) // ww * h // hh
    v = torch.arange(n) % ww * w // ww
    for s in range(lam * lam):
        cu, cv = u + s // lam - r, v + s % lam - r
        ok = (cu >= 0) & (cu < h) & (cv >= 0) & (cv < w)
        j = torch.where(ok, cu * w + cv, 0)
        out[:, :, s] = torch.where(ok, q_dense[:, torch.arange(n), j], 0.0)
    return out.float()


_LAUNCH = "em_assign_kernel[(B, cdiv(N, 16))](X, CEN, Q, N, C, H, W, h, w, t, LAM=lam, S2=32, BN=16, BC=16)"


def _slot_inputs(b, grid, clusters, c, seed, dtype=torch.float32):
    g = _gen(seed)
    n, m = grid[0] * grid[1], clusters[0] * clusters[1]
    return torch.randn(b, n, c, generator=g).to(dtype), torch.randn(b, m, c, generator=g).to(dtype)


def _as_direct(fn):
    require_triton()
    rng = hidden_rng(73)
    cases = [(2, (6, 8), (3, 4), 3, 5), (1, (10, 9), (7, 4), 5, 20)]
    cases += [(rng.randint(1, 2), (rng.randint(3, 12), rng.randint(3, 12)), None, rng.choice((1, 3, 5)),
               rng.randint(1, 40)) for _ in range(2)]
    for i, (b, grid, clusters, lam, c) in enumerate(cases):
        clusters = clusters or (rng.randint(1, grid[0]), rng.randint(1, grid[1]))
        dtype = torch.float16 if i == len(cases) - 1 else torch.float32
        x, cen = _slot_inputs(b, grid, clusters, c, 11 * i + c, dtype)
        n = grid[0] * grid[1]
        q = torch.full((b, n, lam * lam), float("nan"))
        res = fn.launch((b, (n + 15) // 16), x, cen, q, n, c, grid[0], grid[1], clusters[0], clusters[1], 0.7,
                        LAM=lam, S2=32, BN=16, BC=16)
        tol = 2e-3 if dtype == torch.float16 else 1e-5
        unwritten = torch.isnan(res[2]).nonzero() if isinstance(res[2], torch.Tensor) else []
        if len(unwritten):
            idx = [int(v) for v in unwritten[0]]
            raise CheckFailed(f"store 0 for slots off the grid: Q{idx} still holds the grader's NaN "
                              f"({len(unwritten)} entries never written; B={b}, {grid[0]}x{grid[1]} -> "
                              f"{clusters[0]}x{clusters[1]}, lambda={lam})")
        assert_matches(res[2], slots_reference(x.float(), cen.float(), grid, clusters, lam, 0.7), atol=tol, rtol=tol,
                       what=f"the Q your kernel stored for B={b}, {grid[0]}x{grid[1]} -> {clusters[0]}x{clusters[1]}, "
                            f"lambda={lam}, C={c}" + (", fp16 features" if dtype == torch.float16 else ""),
                       hint=f"launched as {_LAUNCH}: token i's cell is ((i // W) h // H, (i % W) w // W); slot s "
                            "holds centre (u + s // LAM - r, v + s % LAM - r); store 0 for slots off the grid and "
                            "write every slot < LAM^2 of every token < N (C in chunks of BC, masked)")


def _as_check(fn, hint):
    require_triton()
    x, cen = _slot_inputs(2, (7, 9), (3, 4), 37, 5, torch.float16)
    got = fn(x, cen, (7, 9), (3, 4), 5, 0.3)
    fn.require_launched()
    assert_matches(got, slots_reference(x.float(), cen.float(), (7, 9), (3, 4), 5, 0.3), atol=2e-3, rtol=2e-3,
                   what="Q from your launcher, B=2, 7x9 -> 3x4, lambda=5, C=37, fp16 features", hint=hint)


register(Question("expedite.assign_kernel", "the local E-step in Triton: lambda^2 slots per token", "em_assign", (
    Check("your kernel, launched by the grader", 3, _as_direct),
    Check("your launcher: fp16 features in, fp32 Q out", 1, lambda fn: _as_check(
        fn, "allocate Q as float32 (B, N, lambda^2), launch one program per 16 tokens of one image")),
), time_limit=90.0, kernel="em_assign_kernel", no_atomics=True, off_limits=_EXPEDITE))


# ------------------------------------------------------------------------------ 5. what happens if
def _mf_check(fn, depth, alpha, n, m, c, hint):
    got = fn(depth, alpha, n, m, c)
    want = macs_fraction_reference(depth, alpha, n, m, c)
    if isinstance(got, torch.Tensor):
        got = float(got)
    if not isinstance(got, (int, float)) or isinstance(got, bool) or abs(got - want) > 1e-9 * max(1.0, abs(want)):
        raise CheckFailed(f"L={depth}, alpha={alpha}, N={n}, M={m}, C={c}: got {got!r}, expected {want:.6f}. {hint}")


def _mf_hidden(fn):
    rng = hidden_rng(74)
    for _ in range(4):
        depth = rng.randint(2, 30)
        n = rng.randint(16, 4000)
        _mf_check(fn, depth, rng.randint(1, depth), n, rng.randint(1, n), rng.choice((32, 64, 384, 1024)), "")


register(Question("expedite.macs_fraction", "what happens if you cluster earlier, or the image grows",
                  "macs_fraction", (
    Check("the paper's Segmenter ViT-L setting", 1, lambda fn: _mf_check(
        fn, 24, 10, 1600, 784, 1024, "a block on n tokens costs 12 n C^2 + 2 n^2 C; the CLS token is one more token "
        "in every block (n = N + 1, then M + 1); blocks 1..alpha see N + 1")),
    Check("a small model on a large grid", 1, lambda fn: _mf_check(
        fn, 8, 3, 1024, 484, 64, "attention's 2 n^2 C term dominates once n > 6 C: do not drop it")),
    Check("hidden settings", 1, _mf_hidden),
), off_limits=_EXPEDITE))
