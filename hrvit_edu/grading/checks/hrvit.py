"""Questions of ``exercises/01_hrvit.ipynb``: the Kronecker fold, DES, stripe windows, fusion,
a piece of the DES kernel, and a "what happens if" question on window padding.  References
are the package's HRViT modules (the last one is counted here)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...models.hrvit import DES, CrossResolutionFusion, stripe_partition
from ..compare import assert_matches, expect_tensor
from ..core import Check, CheckFailed, Question, hidden_generator, hidden_rng, register, require_triton

_OWN = "hrvit_edu.grading.checks.hrvit"
# The fold and DES questions re-implement what these compute: none of them may be called.
_DES_PACKAGE = ("hrvit_edu.kernels.des", "hrvit_edu.models.hrvit.DES", _OWN, "numpy.kron")
_DES_CALLS = ("torch.kron", "torch.Tensor.kron", "torch.ops.hrvit_edu.des", "torch.ops.hrvit_edu.des_backward")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ 1. fold
def _kron_inputs(k, p, batch, seed):
    g = _gen(seed)
    return (torch.randn(k, k, generator=g, dtype=torch.float64), torch.randn(p, p, generator=g, dtype=torch.float64),
            torch.randn(*batch, k * p, generator=g, dtype=torch.float64))


def _kron_check(fn, k, p, batch, seed, hint):
    A, B, x = _kron_inputs(k, p, batch, seed)
    want = x @ torch.kron(A, B).T
    assert_matches(fn(A.clone(), B.clone(), x.clone()), want, atol=1e-9, rtol=1e-9,
                   what=f"(A kron B) x for K={k}, P={p}", hint=hint)


def _kron_hidden(fn):
    rng = hidden_rng(10)
    for _ in range(3):
        batch = tuple(rng.randint(1, 4) for _ in range(rng.randint(0, 2)))
        _kron_check(fn, rng.randint(1, 9), rng.randint(1, 9), batch, rng.randrange(2 ** 31), "")


def _kron_memory(fn):
    k = p = 48                                   # A kron B: 2304 x 2304 float64, 40.5 MiB
    A, B, x = _kron_inputs(k, p, (2,), 3)
    _kron_check(fn, k, p, (2,), 3, _FOLD_HINT)
    kron_bytes = (k * p) ** 2 * A.element_size()
    peak = fn.last.peak_bytes
    if peak >= kron_bytes // 4:
        raise CheckFailed(f"right values, but the call created {peak / 2 ** 20:.1f} MiB of tensors at its peak "
                          f"for K = P = {k}, where A kron B alone is {kron_bytes / 2 ** 20:.1f} MiB: it was formed "
                          f"(einsum or broadcasting count too). {_FOLD_HINT}")


_FOLD_HINT = "fold x[k*P + p] = X[k, p]: A mixes rows (K), B mixes columns (P): A X B^T"

register(Question("hrvit.kron_fold", "(A kron B) x without forming A kron B", "kron_matvec", (
    Check("square factors", 1, lambda fn: _kron_check(fn, 4, 4, (), 0, _FOLD_HINT)),
    Check("K != P", 1, lambda fn: _kron_check(fn, 3, 5, (), 1, _FOLD_HINT)),
    Check("batched tokens", 1, lambda fn: _kron_check(fn, 6, 8, (2, 7), 2,
                                                       "x may carry leading batch dims (..., K*P)")),
    Check("hidden sizes", 1, lambda fn: _kron_hidden(fn)),
    Check("never forms A kron B", 1, _kron_memory),
), forbidden=_DES_CALLS, off_limits=_DES_PACKAGE, measure_memory=True))


# ------------------------------------------------------------------------------ 2. DES
def _des_module(c, seed):
    torch.manual_seed(seed)
    d = DES(c).double()
    for p in d.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return d


def _des_call(fn, d, x):
    return fn(x, d.left.weight.detach(), d.left.bias.detach(), d.right.weight.detach(), d.right.bias.detach())


def _des_hint(got, want):
    return "use GELU between the two factors (the official code), and add b_A per row k after A"


def _des_forward(fn):
    for c, shape in [(32, (5,)), (96, (2, 3))]:
        d = _des_module(c, c)
        x = torch.randn(*shape, c, generator=_gen(c), dtype=torch.float64)
        with torch.no_grad():
            want = d(x)
        assert_matches(_des_call(fn, d, x), want, atol=1e-9, rtol=1e-9, what=f"DES(x) for C={c}",
                       hint=_des_hint)


def _des_linear_case(fn):
    """With zero biases and small inputs GELU(y) ~ y/2: catches a missing or extra activation."""
    d = _des_module(48, 3)
    for m in (d.left, d.right):
        torch.nn.init.zeros_(m.bias)
    x = torch.randn(4, 48, generator=_gen(3), dtype=torch.float64)
    with torch.no_grad():
        want = d(x)
    assert_matches(_des_call(fn, d, x), want, atol=1e-9, rtol=1e-9, what="DES(x) with zero biases",
                   hint="is the activation GELU, applied after B and before A?")


def _des_grad(fn):
    d = _des_module(64, 4)
    x = torch.randn(3, 64, generator=_gen(4), dtype=torch.float64)
    up = torch.randn(3, 64, generator=_gen(5), dtype=torch.float64)
    params = [t.detach() for t in (d.left.weight, d.left.bias, d.right.weight, d.right.bias)]
    out, g = fn.with_grad((x, *params), 0, up)
    expect_tensor(out)
    if g is None:
        raise CheckFailed("the output does not depend differentiably on x (did you detach or use numpy?)")
    x2 = x.detach().requires_grad_()
    (g2,) = torch.autograd.grad(d(x2), x2, up)
    assert_matches(g, g2, atol=1e-9, rtol=1e-9, what="gradient w.r.t. x")


def _des_hidden(fn):
    rng = hidden_rng(11)
    for i in range(3):
        k, p = rng.randint(1, 8), rng.randint(1, 8)
        g = hidden_generator(11 + i)
        A, B = torch.randn(k, k, generator=g, dtype=torch.float64), torch.randn(p, p, generator=g, dtype=torch.float64)
        bA, bB = torch.randn(k, generator=g, dtype=torch.float64), torch.randn(p, generator=g, dtype=torch.float64)
        x = torch.randn(*[rng.randint(1, 4) for _ in range(rng.randint(0, 2))], k * p, generator=g, dtype=torch.float64)
        X = x.reshape(*x.shape[:-1], k, p)
        want = (A @ F.gelu(X @ B.T + bB) + bA[:, None]).reshape(x.shape)
        assert_matches(fn(x, A, bA, B, bB), want, atol=1e-9, rtol=1e-9, what=f"DES(x) for K={k}, P={p}")


register(Question("hrvit.des", "the DES forward pass, eq. (1.3)", "des_forward", (
    Check("random tokens", 1, _des_forward),
    Check("activation between the factors", 1, _des_linear_case),
    Check("gradient w.r.t. x", 1, _des_grad),
    Check("hidden sizes", 1, _des_hidden),
), forbidden=_DES_CALLS, off_limits=_DES_PACKAGE))


# ------------------------------------------------------------------------------ 3. stripes
def _stripe_check(fn, h, w, s, o, hint):
    x = torch.randn(2, h, w, 3, generator=_gen(h * 31 + w + 1000 * s))
    want_win, want_valid = stripe_partition(x, s, o)
    got = fn(x.clone(), s, o)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise CheckFailed("return a pair (windows, valid)")
    assert_matches(got[0], want_win, atol=0, rtol=0, what=f"{o!r} windows for H={h}, W={w}, s={s}", hint=hint)
    valid = expect_tensor(got[1], "valid counts")
    if valid.tolist() != want_valid.tolist():
        raise CheckFailed(f"valid counts {valid.tolist()} != {want_valid.tolist()} - the last stripe "
                          "holds fewer real tokens when the side is not a multiple of s")


def _stripe_hidden(fn):
    rng = hidden_rng(12)
    for o in ("h", "v", "h", "v"):
        _stripe_check(fn, rng.randint(1, 13), rng.randint(1, 13), rng.randint(1, 5), o, "")


register(Question("hrvit.stripes", "cross-shaped stripe windows with zero padding", "stripe_windows", (
    Check("horizontal, exact fit", 1, lambda fn: _stripe_check(fn, 6, 5, 2, "h",
                                                                "horizontal stripes: s rows x W, tokens row-major")),
    Check("horizontal, padded", 1, lambda fn: _stripe_check(fn, 7, 4, 3, "h",
                                                             "zero-pad the bottom to a multiple of s")),
    Check("vertical, padded", 1, lambda fn: _stripe_check(
        fn, 5, 7, 3, "v", "vertical windows are column-major: all H rows of a stripe's first column first, "
                          "padding on the right")),
    Check("hidden sizes", 1, lambda fn: _stripe_hidden(fn)),
), off_limits=("hrvit_edu.models.hrvit.stripe_partition", "hrvit_edu.models.hrvit.stripe_merge", _OWN)))


# ------------------------------------------------------------------------------ 4. fusion
def _affine(bn):
    """An eval-mode BatchNorm as y = scale * x + shift, per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale.detach(), (bn.bias - bn.running_mean * scale).detach()


def _fusion_setup(seed, c=(8, 16), size=(6, 5)):
    """A two-branch fusion with random BN statistics; the reader gets its raw weights only."""
    torch.manual_seed(seed)
    f = CrossResolutionFusion(list(c)).double().eval()
    for mod in f.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
            torch.nn.init.normal_(mod.bias)
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
    dw, bn1, pw, bn2 = f.paths[1][0]            # high -> low
    up_pw, up_bn, _ = f.paths[0][1]             # low -> high
    params = {"down_dw": dw.weight.detach(), "down_bn1": _affine(bn1),
              "down_pw": pw.weight.detach(), "down_pw_bias": pw.bias.detach(), "down_bn2": _affine(bn2),
              "up_pw": up_pw.weight.detach(), "up_pw_bias": up_pw.bias.detach(), "up_bn": _affine(up_bn)}
    h, w = size
    hi = torch.randn(2, c[0], 2 * h, 2 * w, generator=_gen(seed), dtype=torch.float64)
    lo = torch.randn(2, c[1], h, w, generator=_gen(seed + 1), dtype=torch.float64)
    return f, hi, lo, params


_FUSION_HINTS = ("high <- low: 1x1 conv (+ bias), BN as scale/shift, nearest upsampling x2; then GELU of the sum",
                 "low <- high: depthwise 3x3 conv, stride 2, padding 1 (groups = C_high, no bias), BN, 1x1 conv "
                 "(+ bias), BN; then GELU of the sum")


def _fusion_check(fn, seed, which, c=(8, 16), size=(6, 5)):
    f, hi, lo, params = _fusion_setup(seed, c, size)
    with torch.no_grad():
        want = f([hi, lo])
        got = fn(hi, lo, params)
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise CheckFailed("return the two fused maps [y_high, y_low]")
    assert_matches(got[which], want[which], atol=1e-9, rtol=1e-9,
                   what=("high-resolution output", "low-resolution output")[which],
                   hint=_FUSION_HINTS[which] + " (GELU, not HRNet's ReLU)")


def _fusion_hidden(fn):
    rng = hidden_rng(13)
    for which in (0, 1):
        _fusion_check(fn, rng.randrange(10 ** 6), which, (rng.randint(1, 12), rng.randint(1, 12)),
                      (rng.randint(1, 9), rng.randint(1, 9)))


register(Question("hrvit.fusion", "cross-resolution fusion of two branches, eq. (1.9)", "fuse_two", (
    Check("high-resolution output", 1, lambda fn: _fusion_check(fn, 0, 0)),
    Check("low-resolution output", 1, lambda fn: _fusion_check(fn, 1, 1)),
    Check("hidden sizes", 1, lambda fn: _fusion_hidden(fn)),
), off_limits=("hrvit_edu.models.hrvit.CrossResolutionFusion", _OWN)))


# ------------------------------------------------------------------------------ 5. kernel piece
# The grader launches the reader's kernel itself (its grid, its buffers, P it chooses), then
# requires the launcher to have launched it: a torch-only answer scores nothing here.
def _right_ref(x, bw, bb):
    return (x.float() @ bw.float().T + bb.float()).to(x.dtype)


def _right_inputs(m, p, dtype, seed):
    g = _gen(seed)
    x = torch.randn(m, p, generator=g).to(dtype)
    return x, torch.randn(p, p, generator=g).to(dtype), torch.randn(p, generator=g).to(dtype)


def _right_direct(fn):
    require_triton()
    rng = hidden_rng(14)
    for m, p in [(32, 16), (21, 8)] + [(rng.randint(1, 50), rng.choice([4, 8, 12, 16, 24])) for _ in range(2)]:
        x, bw, bb = _right_inputs(m, p, torch.float32, rng.randrange(2 ** 31))
        y = torch.full_like(x, float("nan"))
        pp = max(16, 1 << (p - 1).bit_length())
        out = fn.launch(((m + 15) // 16,), x, bw, bb, y, m, P=p, BLOCK_M=16, PP=pp)
        assert_matches(out[3], _right_ref(x, bw, bb), atol=1e-4, rtol=1e-4,
                       what=f"what your kernel stored for M={m}, P={p}",
                       hint="launched as right_factor_kernel[(cdiv(M, 16),)](X, BW, BB, Y, M, P=P, BLOCK_M=16, "
                            "PP=PP): mask rows >= M and columns >= P")


def _right_check(fn, m, p, dtype, atol, hint):
    require_triton()
    x, bw, bb = _right_inputs(m, p, dtype, m * 7 + p)
    got = fn(x.clone(), bw, bb)
    fn.require_launched()
    assert_matches(got, _right_ref(x, bw, bb), atol=atol, rtol=atol,
                   what=f"Y for M={m}, P={p}, {str(dtype).replace('torch.', '')}", hint=hint)


register(Question("hrvit.des_kernel", "the DES kernel's right factor: Y = X B^T + b_B in Triton",
                  "right_factor", (
    Check("your kernel, launched by the grader", 1, _right_direct),
    Check("M a multiple of the block", 1, lambda fn: _right_check(fn, 32, 16, torch.float32, 1e-4,
                                                                 "Y = X @ B^T: transpose B inside tl.dot")),
    Check("ragged M and P = 8", 1, lambda fn: _right_check(
        fn, 21, 8, torch.float32, 1e-4, "pad P to 16 for tl.dot and mask rows >= M and columns >= P")),
    Check("fp16 in, fp16 out", 1, lambda fn: _right_check(fn, 19, 16, torch.float16, 3e-3,
                                                          "accumulate in fp32, store in the input dtype")),
), time_limit=60.0, kernel="right_factor_kernel", off_limits=_DES_PACKAGE))


# ------------------------------------------------------------------------------ 6. what happens if
def _waste_ref(h, w, s):
    """Fraction of the executed logits of padded stripe attention that touch a padded token."""
    def one_orientation(lines, per_line):        # `lines` real rows (or columns) of `per_line` tokens
        n = -(-lines // s)
        executed = n * (s * per_line) ** 2
        useful = sum((min(s, lines - g * s) * per_line) ** 2 for g in range(n))
        return executed, useful
    eh, uh = one_orientation(h, w)
    ev, uv = one_orientation(w, h)
    return 1 - (uh + uv) / (eh + ev)


def _waste_check(fn, h, w, s, hint):
    got = fn(h, w, s)
    try:
        got = float(got)
    except (TypeError, ValueError, RuntimeError):
        raise CheckFailed(f"return one number (a float), got {type(got).__name__}") from None
    want = _waste_ref(h, w, s)
    if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
        raise CheckFailed(f"H={h}, W={w}, s={s}: got {got:.6f}, expected {want:.6f}. {hint}")


def _waste_hidden(fn):
    rng = hidden_rng(15)
    for _ in range(4):
        _waste_check(fn, rng.randint(1, 40), rng.randint(1, 40), rng.randint(1, 9), "")


register(Question("hrvit.padding_waste", "what happens if s does not divide the map: wasted logits",
                  "wasted_logit_fraction", (
    Check("s divides the map", 1, lambda fn: _waste_check(fn, 8, 8, 4, "no padding: nothing is wasted")),
    Check("b1's window on the textbook's 4x4 map", 1, lambda fn: _waste_check(
        fn, 4, 4, 7, "one window per orientation of s*W (or s*H) tokens, of which H*W are real")),
    Check("ragged, non-square", 1, lambda fn: _waste_check(
        fn, 9, 4, 7, "count both orientations: horizontal windows have s*W tokens, vertical ones s*H; "
                     "a logit is wasted when its query or its key is padding")),
    Check("hidden sizes", 1, lambda fn: _waste_hidden(fn)),
), off_limits=("hrvit_edu.models.hrvit.stripe_partition", "hrvit_edu.models.hrvit.stripe_merge", _OWN)))
