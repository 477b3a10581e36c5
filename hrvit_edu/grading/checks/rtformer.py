"""Questions of ``exercises/03_rtformer.ipynb``: the grouped double normalisation, the
cross-resolution keys and values, multi-head external attention as a block-sparse GFA, the fused
kernel's pass-1 column statistics in Triton, and a "what happens if" question on the pooled keys.
The package's RTFormer pieces, which the answers may not call, are used here only as references."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...kernels.external_attention import external_attention_reference, grouped_double_norm
from ..compare import assert_matches
from ..core import Check, CheckFailed, Question, hidden_rng, register, require_triton

_OWN = "hrvit_edu.grading.checks.rtformer"
# Everything in the package that computes an RTFormer piece: none of it may be called by an answer.
_RTFORMER = ("hrvit_edu.models.rtformer", "hrvit_edu.kernels.external_attention", _OWN)
EPS = 1e-6
# Question 2 asks for the adaptive bins themselves: torch's adaptive pools would answer it.
_ADAPTIVE = ("torch.nn.functional.adaptive_max_pool2d", "torch.nn.functional.adaptive_max_pool2d_with_indices",
             "torch.nn.functional.adaptive_avg_pool2d", "torch.adaptive_max_pool2d", "torch.adaptive_avg_pool2d",
             "torch.nn.functional.adaptive_max_pool1d", "torch.nn.functional.adaptive_avg_pool1d")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ 1. double norm
def _dn_check(fn, b, m, n, groups, seed, hint, starve=False):
    a = torch.randn(b, m, n, generator=_gen(seed), dtype=torch.float64) * 3
    if starve:          # position 0 is nobody's favourite in group 0: its group sum is ~1e-18
        a[:, : m // groups, 0] = -40.0
    assert_matches(fn(a.clone(), groups), grouped_double_norm(a, groups, EPS), atol=1e-9, rtol=1e-7,
                   what=f"GDN of logits (B={b}, M={m}, N={n}) with G={groups}", hint=hint)


def _dn_hidden(fn):
    rng = hidden_rng(60)
    for _ in range(3):
        g = rng.choice((1, 2, 4, 8))
        _dn_check(fn, rng.randint(1, 3), g * rng.randint(1, 6), rng.randint(1, 30), g, rng.randrange(10 ** 6), "")


register(Question("rtformer.double_norm", "the grouped double normalisation, (3.2)-(3.3)", "grouped_double_norm", (
    Check("one group (EANet's double norm)", 1, lambda fn: _dn_check(
        fn, 2, 8, 10, 1, 0, "first a softmax over the N positions (the last axis) for every slot, then divide by "
        "the sum over the slots, per position")),
    Check("eight groups", 1, lambda fn: _dn_check(
        fn, 1, 16, 7, 8, 1, "the L1 sum runs over the M/G consecutive slots of one group only, per position")),
    Check("the epsilon", 1, lambda fn: _dn_check(
        fn, 1, 8, 6, 2, 2, "divide by (group sum + eps), eps = 1e-6: a position no slot of the group likes keeps "
        "weights near 0 instead of being blown up to 1/(M/G)", starve=True)),
    Check("hidden sizes", 1, _dn_hidden),
), off_limits=_RTFORMER))


# ------------------------------------------------------------------------------ 2. cross K/V
def cross_kv_reference(x_l, mean, var, gamma, beta, w_kv, s):
    c_h = w_kv.shape[0] // 2
    xn = F.batch_norm(x_l, mean, var, gamma, beta, False, 0.0, 1e-5)
    kv = torch.einsum("oc,bcj->boj", w_kv, F.adaptive_max_pool2d(xn, s).flatten(2))
    return kv[:, :c_h], kv[:, c_h:]


def _kv_inputs(b, c_l, c_h, h, w, seed):
    g = _gen(seed)
    r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)
    var = 0.5 + torch.rand(c_l, generator=g, dtype=torch.float64)
    return r(b, c_l, h, w), r(c_l), var, r(c_l), r(c_l), r(2 * c_h, c_l)


def _kv_check(fn, b, c_l, c_h, h, w, s, seed, hint):
    ins = _kv_inputs(b, c_l, c_h, h, w, seed)
    got = fn(*(t.clone() for t in ins), s)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise CheckFailed(f"return the pair (K_c, V_c), got {type(got).__name__}")
    want = cross_kv_reference(*ins, s)
    for name, a, ref in zip(("K_c", "V_c"), got, want):
        assert_matches(a, ref, atol=1e-9, rtol=1e-7, what=f"{name} for a {h}x{w} low map, s={s}, C_h={c_h}", hint=hint)


def _kv_hidden(fn):
    rng = hidden_rng(61)
    for _ in range(3):
        _kv_check(fn, rng.randint(1, 2), rng.randint(2, 6), rng.randint(1, 4), rng.randint(1, 13), rng.randint(1, 13),
                  rng.randint(1, 6), rng.randrange(10 ** 6), "")


register(Question("rtformer.cross_kv", "cross-resolution keys and values, (3.6)", "cross_kv", (
    Check("a map that divides into s x s bins", 1, lambda fn: _kv_check(
        fn, 2, 4, 3, 8, 8, 4, 0, "BN (eval: running statistics, eps 1e-5) first, then the *max* over each bin, then "
        "W_kv; the first C_h output channels are K_c, the next C_h are V_c; keys in row-major bin order")),
    Check("uneven bins", 1, lambda fn: _kv_check(
        fn, 1, 3, 2, 7, 10, 3, 1, "adaptive bins: bin i of an axis of n covers floor(i n/s) .. ceil((i+1) n/s) - 1")),
    Check("a low map smaller than the grid", 1, lambda fn: _kv_check(
        fn, 1, 3, 2, 5, 3, 4, 2, "when s > n the bins repeat pixels (some bins span two): still floor/ceil bounds")),
    Check("hidden sizes", 1, _kv_hidden),
), forbidden=_ADAPTIVE, off_limits=_RTFORMER))


# ------------------------------------------------------------------------------ 3. MHEA = sparse GFA
def mhea_reference(x, k_head, v_head, heads):
    """(3.5) with *interleaved* heads: head h reads input channels h, h + H, h + 2H, ... and writes
    output channels h, h + H, ...; all heads share K' (M, C_in/H) and V' (C_out/H, M)."""
    b, c_in, n = x.shape
    q = x.reshape(b, c_in // heads, heads, n).transpose(1, 2).reshape(b * heads, c_in // heads, n)
    out = torch.einsum("om,bmn->bon", v_head, grouped_double_norm(torch.einsum("mc,bcn->bmn", k_head, q), 1, EPS))
    return out.reshape(b, heads, -1, n).transpose(1, 2).reshape(b, -1, n)


def _mh_check(fn, heads, c_in, c_out, m, seed, hint):
    g = _gen(seed)
    k_head = torch.randn(m, c_in // heads, generator=g, dtype=torch.float64)
    v_head = torch.randn(c_out // heads, m, generator=g, dtype=torch.float64)
    got = fn(k_head.clone(), v_head.clone(), heads, c_in, c_out)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise CheckFailed(f"return the pair (K, V), got {type(got).__name__}")
    k, v = got
    if tuple(k.shape) != (heads * m, c_in) or tuple(v.shape) != (c_out, heads * m):
        raise CheckFailed(f"K must be (H M, C_in) = {(heads * m, c_in)} and V (C_out, H M) = {(c_out, heads * m)}; "
                          f"got {tuple(k.shape)} and {tuple(v.shape)}")
    x = torch.randn(2, c_in, 9, generator=g, dtype=torch.float64)
    got_y = external_attention_reference(x, k.to(x.dtype), v.to(x.dtype), heads)
    assert_matches(got_y, mhea_reference(x, k_head, v_head, heads),
                   atol=1e-9, rtol=1e-7, what=f"GFA(your K, V, G={heads}) vs multi-head EA (H={heads}, M={m}, "
                   f"C_in={c_in}, C_out={c_out})", hint=hint)


def _mh_hidden(fn):
    rng = hidden_rng(62)
    for _ in range(2):
        h = rng.choice((2, 3, 4))
        _mh_check(fn, h, h * rng.randint(1, 4), h * rng.randint(1, 4), rng.randint(1, 6), rng.randrange(10 ** 6), "")


register(Question("rtformer.mhea_as_gfa", "multi-head external attention as a block-sparse GFA, (3.5)", "mhea_as_gfa", (
    Check("two heads", 1, lambda fn: _mh_check(
        fn, 2, 4, 4, 3, 0, "group h of GFA = head h: its M slots are K' on head h's channels (zero elsewhere), "
        "and V' writes head h's output channels")),
    Check("four heads, C_in != C_out", 1, lambda fn: _mh_check(
        fn, 4, 8, 12, 5, 1, "the heads are interleaved: head h owns channels h, h + H, h + 2H, ... on both sides")),
    Check("hidden sizes", 1, _mh_hidden),
), off_limits=_RTFORMER))


# ------------------------------------------------------------------------------ 4. kernel piece
def column_lse_reference(x, k):
    return torch.logsumexp(torch.einsum("mc,bcn->bmn", k.double(), x.double()), dim=-1).float()


def _lse_inputs(b, c, n, m, scale, seed, dtype=torch.float32):
    g = _gen(seed)
    return (torch.randn(b, c, n, generator=g) * scale).to(dtype), (torch.randn(m, c, generator=g) / c ** 0.5).to(dtype)


_LAUNCH = "column_lse_kernel[(B, cdiv(M, 16))](X, K, OUT, N, C, M, BN=16, BM=16, BC=16)"


def _lse_direct(fn, large=False):
    require_triton()
    rng = hidden_rng(63 + large)
    cases = [(2, 5, 40, 20), (1, 33, 17, 16)] if not large else [(1, 16, 150, 24)]
    for i, (b, c, n, m) in enumerate(cases + [
            (rng.randint(1, 2), rng.randint(1, 40), rng.randint(1, 70), rng.randint(1, 40)) for _ in range(2)]):
        dtype = torch.float16 if i == len(cases) + 1 else torch.float32
        x, k = _lse_inputs(b, c, n, m, 40.0 if large else 1.0, b + 10 * c + 100 * n + m, dtype)
        out = torch.full((b, m), float("nan"))
        res = fn.launch((b, (m + 15) // 16), x, k, out, n, c, m, BN=16, BM=16, BC=16)
        tol = 2e-3 if dtype == torch.float16 else 1e-4
        assert_matches(res[2], column_lse_reference(x, k), atol=tol, rtol=tol,
                       what=f"what your kernel stored for B={b}, C={c}, N={n}, M={m}"
                            + (", logits x40" if large else "") + (", fp16 inputs" if dtype == torch.float16 else ""),
                       hint=f"launched as {_LAUNCH}: one program = 16 slots of one image; loop over the N positions "
                            "in tiles of BN (mask n >= N with -inf), over C in chunks of BC (mask c >= C), store "
                            "L = max + log(sum) for slots < M"
                            + ("; exp overflows float32 past ~88: keep a running max and rescale the running sum "
                               "when the max grows (online softmax)" if large else ""))


def _lse_check(fn, b, c, n, m, scale, dtype, hint):
    require_triton()
    x, k = _lse_inputs(b, c, n, m, scale, 7 * n + m + c, dtype)
    got = fn(x, k)
    fn.require_launched()
    tol = 2e-3 if dtype == torch.float16 else 1e-4
    assert_matches(got, column_lse_reference(x, k), atol=tol, rtol=tol,
                   what=f"L for B={b}, C={c}, N={n}, M={m}, inputs x{scale:g}, {str(dtype).replace('torch.', '')}",
                   hint=hint)


register(Question("rtformer.column_lse_kernel", "the fused kernel's pass 1: column log-sum-exp, in Triton",
                  "column_logsumexp", (
    Check("your kernel, launched by the grader", 2, _lse_direct),
    Check("large logits over many tiles, launched by the grader", 1, lambda fn: _lse_direct(fn, large=True)),
    Check("your launcher: fp16 in, fp32 statistics out", 1, lambda fn: _lse_check(
        fn, 2, 8, 37, 16, 1.0, torch.float16, "accumulate in fp32 and return a float32 (B, M) tensor")),
), time_limit=60.0, kernel="column_lse_kernel", off_limits=_RTFORMER))


# ------------------------------------------------------------------------------ 5. what happens if
def _bins(n, s):
    return {(i * n // s, -(-(i + 1) * n // s)) for i in range(s)}


def distinct_keys_reference(h, w, s):
    return len(_bins(h, s)) * len(_bins(w, s))


def _keys_check(fn, h, w, s, hint):
    got = fn(h, w, s)
    want = distinct_keys_reference(h, w, s)
    if isinstance(got, bool) or not isinstance(got, int) or got != want:
        raise CheckFailed(f"a {h}x{w} low map pooled to {s}x{s}: got {got!r}, expected {want} distinct keys. {hint}")


def _keys_hidden(fn):
    rng = hidden_rng(64)
    for _ in range(4):
        _keys_check(fn, rng.randint(1, 40), rng.randint(1, 40), rng.randint(1, 16), "")


register(Question("rtformer.distinct_keys", "what happens if the low map is smaller than the CA grid",
                  "distinct_keys", (
    Check("s divides the map", 1, lambda fn: _keys_check(
        fn, 32, 64, 8, "with s <= n every bin is its own window")),
    Check("maps smaller than the official s = 12", 1, lambda fn: (_keys_check(
        fn, 4, 4, 12, "with s > n bins repeat: count distinct (start, end) windows per axis"), _keys_check(
        fn, 5, 7, 12, "with s > n some bins span two pixels: distinct (start, end) pairs, not min(n, s)"))),
    Check("hidden sizes", 1, _keys_hidden),
), off_limits=_RTFORMER))
