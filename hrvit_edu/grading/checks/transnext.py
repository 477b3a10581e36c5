"""Questions of ``exercises/02_transnext.ipynb``: the valid-key count N_i, length-scaled cosine
attention, the Activate-and-Pool operator, ConvGLU, the window logits of the fused kernel in
Triton, and a "what happens if" question on the logit scale.  References live here (the
package's TransNeXt pieces, which the answers may not call, are used only as references)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...kernels.aggregated_attention import key_counts, window_dots, window_validity
from ..compare import assert_matches
from ..core import Check, CheckFailed, Question, hidden_rng, register, require_triton

_OWN = "hrvit_edu.grading.checks.transnext"
# Everything in the package that computes a TransNeXt piece: none of it may be called by an answer.
_TRANSNEXT = ("hrvit_edu.models.transnext", "hrvit_edu.kernels.aggregated_attention",
              "hrvit_edu.kernels.window_attention", _OWN)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ 1. N_i
def _counts_check(fn, h, w, k, p, hint):
    assert_matches(fn(h, w, k, p), key_counts(h, w, k, p), atol=0, rtol=0, what=f"N for H={h}, W={w}, k={k}, P={p}",
                   hint=hint)


def _counts_hidden(fn):
    rng = hidden_rng(50)
    for _ in range(4):
        _counts_check(fn, rng.randint(1, 9), rng.randint(1, 9), rng.choice((1, 3, 5, 7)), rng.randint(1, 20), "")


register(Question("transnext.key_counts", "the number of keys each query sees, (2.4)", "valid_key_counts", (
    Check("3x3 windows on a 4x5 map", 1, lambda fn: _counts_check(
        fn, 4, 5, 3, 7, "count the window slots (r + a1 - k//2, c + a2 - k//2) that are on the map, then add P; "
        "row-major pixels, float32")),
    Check("a 5x5 window, a map narrower than it", 1, lambda fn: _counts_check(
        fn, 6, 2, 5, 3, "slots are masked, not shifted inward: a 2-wide map leaves at most 2 columns per row")),
    Check("hidden sizes", 1, _counts_hidden),
), off_limits=_TRANSNEXT))


# ------------------------------------------------------------------------------ 2. LSCA
def lsca_reference(q, k, v, tau, e, bias):
    n = k.shape[2]
    qh, kh = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    logits = (qh + e[None, :, None]) @ kh.transpose(-1, -2) * (tau * math.log(n))[None, :, None, None] + bias[None]
    return torch.softmax(logits, -1) @ v


def _lsca_inputs(b, h, n, d, seed, dtype=torch.float64):
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return r(b, h, n, d) * 3, r(b, h, n, d) * 2, r(b, h, n, d), 1 + torch.rand(h, generator=g, dtype=dtype) * 4, \
        0.1 * r(h, d), 0.5 * r(h, n, n)


def _lsca_check(fn, b, h, n, d, seed, hint, dtype=torch.float64):
    ins = _lsca_inputs(b, h, n, d, seed, dtype)
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    assert_matches(fn(*(t.clone() for t in ins)), lsca_reference(*ins), atol=tol, rtol=tol,
                   what=f"output for B={b}, heads={h}, N={n}, d={d}", hint=hint)


def _lsca_hidden(fn):
    rng = hidden_rng(51)
    for _ in range(3):
        _lsca_check(fn, rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 20), rng.randint(2, 12),
                    rng.randrange(10 ** 6), "")


register(Question("transnext.lsca", "length-scaled cosine attention, (2.1)", "lsca", (
    Check("one head", 1, lambda fn: _lsca_check(
        fn, 1, 1, 6, 4, 0, "normalise q and k to unit length, add e to q-hat, scale by tau ln N, then add the bias")),
    Check("tau and e per head", 1, lambda fn: _lsca_check(
        fn, 2, 3, 9, 5, 1, "tau (heads,) and e (heads, d) differ per head: broadcast them over the head axis")),
    Check("the bias is not scaled", 1, lambda fn: _lsca_check(
        fn, 1, 2, 16, 8, 2, "add B after the tau ln N scaling (the official code does not scale the bias)")),
    Check("float32", 1, lambda fn: _lsca_check(fn, 2, 2, 7, 6, 3, "keep the input dtype", torch.float32)),
    Check("hidden sizes", 1, _lsca_hidden),
), off_limits=_TRANSNEXT))


# ------------------------------------------------------------------------------ 3. Activate-and-Pool
def pool_reference(x, hw, w_sr, b_sr, ln_w, ln_b, pool_hw):
    b, n, c = x.shape
    m = F.gelu(F.conv2d(x.transpose(1, 2).reshape(b, c, *hw), w_sr[:, :, None, None], b_sr))
    pooled = F.adaptive_avg_pool2d(m, pool_hw).flatten(2).transpose(1, 2)
    return F.layer_norm(pooled, (c,), ln_w, ln_b, eps=1e-5)


def _pool_check(fn, b, c, hw, pool_hw, seed, hint):
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    ins = (r(b, hw[0] * hw[1], c), tuple(hw), r(c, c) / c ** 0.5, 0.1 * r(c), 1 + 0.1 * r(c), 0.1 * r(c),
           tuple(pool_hw))
    assert_matches(fn(*ins), pool_reference(*ins), atol=1e-9, rtol=1e-9,
                   what=f"sigma(X) for a {hw[0]}x{hw[1]} map pooled to {pool_hw[0]}x{pool_hw[1]}", hint=hint)


def _pool_hidden(fn):
    rng = hidden_rng(52)
    for _ in range(3):
        h, w = rng.randint(1, 11), rng.randint(1, 11)
        _pool_check(fn, rng.randint(1, 2), rng.randint(2, 8), (h, w), (rng.randint(1, h), rng.randint(1, w)),
                    rng.randrange(10 ** 6), "")


register(Question("transnext.pool", "the Activate-and-Pool operator sigma(X), (2.3)", "activate_and_pool", (
    Check("bins that divide the map", 1, lambda fn: _pool_check(
        fn, 2, 4, (8, 8), (2, 2), 0, "1x1 conv (a matmul per token), GELU, average each bin, then LayerNorm "
        "(eps 1e-5) over the channels; tokens (B, P, C), bins row-major")),
    Check("GELU before the pool", 1, lambda fn: _pool_check(
        fn, 1, 3, (6, 6), (3, 3), 1, "activate, then pool: GELU(mean) is not mean(GELU)")),
    Check("uneven bins", 1, lambda fn: _pool_check(
        fn, 1, 5, (5, 7), (2, 3), 2, "adaptive bins: bin a covers rows floor(a H / Hp) .. ceil((a + 1) H / Hp) - 1")),
    Check("hidden sizes", 1, _pool_hidden),
), off_limits=_TRANSNEXT))


# ------------------------------------------------------------------------------ 4. ConvGLU
def convglu_reference(x, hw, w1, b1, dw_w, dw_b, w2, b2):
    b, n, c = x.shape
    g, u = (x @ w1.T + b1).chunk(2, -1)
    hid = g.shape[-1]
    g = F.conv2d(g.transpose(1, 2).reshape(b, hid, *hw), dw_w, dw_b, padding=1, groups=hid)
    return (F.gelu(g.flatten(2).transpose(1, 2)) * u) @ w2.T + b2


def _glu_check(fn, b, c, hid, hw, seed, hint):
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    ins = (r(b, hw[0] * hw[1], c), tuple(hw), r(2 * hid, c) / c ** 0.5, 0.1 * r(2 * hid), r(hid, 1, 3, 3) / 3,
           0.1 * r(hid), r(c, hid) / hid ** 0.5, 0.1 * r(c))
    assert_matches(fn(*ins), convglu_reference(*ins), atol=1e-9, rtol=1e-9,
                   what=f"ConvGLU output for C={c}, h'={hid}, map {hw[0]}x{hw[1]}", hint=hint)


def _glu_hidden(fn):
    rng = hidden_rng(53)
    for _ in range(3):
        _glu_check(fn, rng.randint(1, 2), rng.randint(1, 8), rng.randint(1, 8), (rng.randint(1, 6), rng.randint(1, 6)),
                   rng.randrange(10 ** 6), "")


register(Question("transnext.convglu", "ConvGLU, (2.11)", "convglu", (
    Check("a 4x4 map", 1, lambda fn: _glu_check(
        fn, 1, 6, 4, (4, 4), 0, "[g; u] = x W1^T + b1 (g the FIRST h' channels); the 3x3 depthwise conv "
        "(padding 1) and the GELU go on g; out = (GELU(conv(g)) * u) W2^T + b2")),
    Check("the conv is on the gate", 1, lambda fn: _glu_check(
        fn, 2, 5, 3, (3, 5), 1, "the depthwise conv belongs to the gate branch g, before its GELU; u stays linear")),
    Check("hidden sizes", 1, _glu_hidden),
), off_limits=_TRANSNEXT))


# ------------------------------------------------------------------------------ 5. kernel piece
def window_logits_reference(qt, k, b_loc, h, w, ks):
    """(G, L, ks^2) float32: qt_i . k_{rho_z(i)} + b_z on the map, -inf off it."""
    out = window_dots(qt.double()[None], k.double()[None], (h, w), ks)[0] + b_loc.double()
    return out.masked_fill(~window_validity(h, w, ks), float("-inf")).float()


def _wl_inputs(g, h, w, d, ks, seed, dtype=torch.float32):
    gen = _gen(seed)
    qt = (torch.randn(g, h * w, d, generator=gen) * 2).to(dtype)
    k = F.normalize(torch.randn(g, h * w, d, generator=gen), dim=-1).to(dtype)
    return qt, k, (0.1 * torch.randn(ks * ks, generator=gen)).to(dtype)


_LAUNCH = ("window_logits_kernel[(cdiv(L, 16), G)](QT, K, BLOC, OUT, L, H, W, D, KS=ks, BM=16, DP=max(16, "
           "next_power_of_2(D)))")


def _wl_direct(fn):
    require_triton()
    rng = hidden_rng(54)
    for g, h, w, d, ks in [(2, 5, 7, 8, 3), (1, 3, 17, 20, 3)] + [
            (rng.randint(1, 2), rng.randint(1, 8), rng.randint(1, 8), rng.randint(2, 20), rng.choice((1, 3, 5)))
            for _ in range(2)]:
        qt, k, b = _wl_inputs(g, h, w, d, ks, g + 10 * h + 100 * w + d)
        out = torch.full((g, h * w, ks * ks), float("nan"))
        dp = max(16, 1 << (d - 1).bit_length())
        res = fn.launch(((h * w + 15) // 16, g), qt, k, b, out, h * w, h, w, d, KS=ks, BM=16, DP=dp)
        assert_matches(res[3], window_logits_reference(qt, k, b, h, w, ks), atol=1e-5, rtol=1e-5,
                       what=f"what your kernel stored for G={g}, {h}x{w}, d={d}, k={ks}",
                       hint=f"launched as {_LAUNCH}: one program = 16 queries of one g; mask rows >= L, head dims "
                            ">= D and off-map slots (store -inf there)")


def _wl_check(fn, g, h, w, d, ks, dtype, hint):
    require_triton()
    qt, k, b = _wl_inputs(g, h, w, d, ks, 7 * h + w + d, dtype)
    got = fn(qt, k, b, h, w, ks)
    fn.require_launched()
    assert_matches(got, window_logits_reference(qt, k, b, h, w, ks), atol=1e-3 if dtype == torch.float16 else 1e-5,
                   rtol=1e-3 if dtype == torch.float16 else 1e-5,
                   what=f"logits for G={g}, {h}x{w}, d={d}, k={ks}, {str(dtype).replace('torch.', '')} in", hint=hint)


register(Question("transnext.window_logits_kernel", "the fused kernel's window logits, in Triton", "window_logits", (
    Check("your kernel, launched by the grader", 2, _wl_direct),
    Check("borders are masked, not shifted", 1, lambda fn: _wl_check(
        fn, 1, 4, 4, 8, 3, torch.float32,
        "an off-map slot is -inf (the query sees fewer keys), never a clamped neighbour")),
    Check("fp16 in, fp32 logits out", 1, lambda fn: _wl_check(
        fn, 2, 6, 5, 16, 3, torch.float16, "accumulate in fp32 and return float32 logits (G, L, k^2)")),
), time_limit=60.0, kernel="window_logits_kernel", off_limits=_TRANSNEXT))


# ------------------------------------------------------------------------------ 6. what happens if
def _mult_ref(img, patch, sr, k, tau):
    """tau ln N_i at the corner, the middle of the top row and the centre of the stage-1 map."""
    side = img // patch
    n = key_counts(side, side, k, max(1, side // sr) ** 2)
    mid = side // 2
    return tuple(tau * math.log(float(n[i])) for i in (0, mid, mid * side + mid))


def _mult_check(fn, img, patch, sr, k, tau, hint):
    got = fn(img, patch, sr, k, tau)
    try:
        got = tuple(float(v) for v in got)
    except (TypeError, ValueError):
        raise CheckFailed(f"return (corner, edge, interior) as three numbers, got {type(got).__name__}") from None
    want = _mult_ref(img, patch, sr, k, tau)
    if len(got) != 3 or any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(got, want)):
        raise CheckFailed(f"img={img}, patch={patch}, sr={sr}, k={k}, tau={tau:.4f}: got "
                          f"({', '.join(f'{v:.4f}' for v in got)}), expected "
                          f"({', '.join(f'{v:.4f}' for v in want)}). {hint}")


def _mult_hidden(fn):
    rng = hidden_rng(55)
    for _ in range(3):
        patch = rng.choice((2, 4))
        _mult_check(fn, rng.choice((64, 96, 128, 224, 320, 512)), patch, rng.choice((2, 4, 8)), rng.choice((3, 5, 7)),
                    rng.uniform(1.0, 6.0), "")
    # tiny maps: the window is wider than the map and the pool would be empty (at least one pooled key)
    _mult_check(fn, rng.choice((8, 12)), 4, rng.choice((4, 8)), 5, rng.uniform(1.0, 6.0), "")


register(Question("transnext.multipliers", "what happens if the input grows: the LSCA logit multiplier",
                  "lsca_multipliers", (
    Check("TransNeXt-Tiny stage 1 at 224", 1, lambda fn: _mult_check(
        fn, 224, 4, 8, 3, 1 / 0.24, "stage 1 is img/patch pixels a side, P = (side // sr)^2 pooled keys, "
        "N = valid window keys + P, multiplier tau ln N")),
    Check("the same model at 512", 1, lambda fn: _mult_check(
        fn, 512, 4, 8, 3, 1 / 0.24, "a larger input adds pooled keys: P grows with the image, so ln N grows")),
    Check("hidden sizes, windows and tau", 1, _mult_hidden),
), off_limits=_TRANSNEXT))
