"""Questions of ``exercises/04_hiremlp.ipynb``: region partition with shift and circular padding,
its inverse, the reach of a shift schedule ("what happens if"), the convolution view of the
region linear, and the kernel's gathered load in Triton.  References live here and in the
package's Hire-MLP module (which the answers may not call)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...kernels import HAS_TRITON, triton_usable
from ...models.hire_mlp import region_partition, region_restore
from ..compare import assert_matches, expect_tensor
from ..core import Check, CheckFailed, Question, hidden_rng, register

_OWN = "hrvit_edu.grading.checks.hiremlp"
# Everything in the package that rearranges regions: none of it may be called by an answer.
_REARRANGE = ("hrvit_edu.models.hire_mlp.region_partition", "hrvit_edu.models.hire_mlp.region_restore",
              "hrvit_edu.models.hire_mlp.RegionMLP", "hrvit_edu.models.hire_mlp.HireModule",
              "hrvit_edu.kernels.hire", _OWN)
_ROLL = ("torch.roll", "torch.Tensor.roll")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _map(b, c, h, w, seed, dtype=torch.float64):
    return torch.randn(b, c, h, w, generator=_gen(seed), dtype=dtype)


# ------------------------------------------------------------------------------ 1. partition
_PART_HINT = "padded row r of region g = r // p, offset i = r % p, is input row (r - s) mod H; channel c*p + i"


def _part_check(fn, h, w, p, s, hint=_PART_HINT):
    x = _map(2, 3, h, w, h * 100 + w * 10 + p + 1000 * s)
    assert_matches(fn(x.clone(), p, s), region_partition(x, p, s, "h"), atol=0, rtol=0,
                   what=f"Z for H={h}, W={w}, p={p}, s={s}", hint=hint)


def _part_hidden(fn):
    rng = hidden_rng(40)
    for _ in range(4):
        h = rng.randint(1, 12)
        _part_check(fn, h, rng.randint(1, 5), rng.randint(1, 5), rng.randint(0, 2 * h), "")


register(Question("hiremlp.partition", "inner-region rearrangement with shift and circular padding, (4.1)-(4.2)",
                  "partition", (
    Check("p divides H, no shift", 1, lambda fn: _part_check(fn, 8, 5, 4, 0)),
    Check("with a shift", 1, lambda fn: _part_check(
        fn, 8, 5, 4, 2, "roll first (row r moves to r + s mod H), then cut regions")),
    Check("circular padding", 1, lambda fn: _part_check(
        fn, 7, 4, 3, 1, "pad to a multiple of p by repeating the first rows (circular), after the shift")),
    Check("padding longer than the map", 1, lambda fn: _part_check(
        fn, 2, 3, 5, 1, "when p > H the padding wraps around more than once: use (r - s) mod H")),
    Check("hidden sizes", 1, _part_hidden),
), forbidden=_ROLL, off_limits=_REARRANGE))


# ------------------------------------------------------------------------------ 2. restore
def _restore_check(fn, h, w, p, s, hint):
    g = -(-h // p)
    z = _map(2, 3 * p, g, w, h * 7 + w + 100 * p + 1000 * s)
    assert_matches(fn(z.clone(), p, h, s), region_restore(z, p, h, s, "h"), atol=0, rtol=0,
                   what=f"restored map for H={h}, p={p}, s={s}", hint=hint)


def _restore_roundtrip(fn):
    x = _map(1, 4, 9, 3, 77)
    got = fn(region_partition(x, 4, 3, "h"), 4, 9, 3)
    assert_matches(got, x, atol=0, rtol=0, what="restore(partition(x))",
                   hint="the inverse: unstack, keep the first H rows, then roll back by -s")


def _restore_hidden(fn):
    rng = hidden_rng(41)
    for _ in range(3):
        h = rng.randint(1, 12)
        _restore_check(fn, h, rng.randint(1, 4), rng.randint(1, 5), rng.randint(0, h), "")


register(Question("hiremlp.restore", "the inverse rearrangement: unstack, crop, roll back", "restore", (
    Check("inverts the partition", 1, _restore_roundtrip),
    Check("crop the padded rows", 1, lambda fn: _restore_check(
        fn, 7, 4, 3, 0, "keep the first H rows of the un-stacked map: padded rows are copies and are dropped")),
    Check("hidden sizes", 1, _restore_hidden),
), off_limits=_REARRANGE))


# ------------------------------------------------------------------------------ 3. what happens if
def _reach_ref(h, p, shifts, row=0):
    """Output row o of a block is padded row (o + s) mod H (padded copies past H are discarded),
    so it reads the input rows of that padded row's region."""
    reach = {row}
    for s in reversed(shifts):
        src = [(r - s) % h for r in range(-(-h // p) * p)]
        new = set()
        for out in reach:
            g = ((out + s) % h) // p
            new |= set(src[g * p:(g + 1) * p])
        reach = new
    return sorted(reach)


def _reach_check(fn, h, p, shifts, hint):
    got = fn(h, p, list(shifts))
    try:
        got = sorted(int(v) for v in got)
    except (TypeError, ValueError):
        raise CheckFailed(f"return the input rows as a list of ints, got {type(got).__name__}") from None
    want = _reach_ref(h, p, list(shifts))
    if got != want:
        raise CheckFailed(f"H={h}, p={p}, shifts {list(shifts)}: got rows {got}, expected {want}. {hint}")


def _reach_hidden(fn):
    rng = hidden_rng(42)
    for _ in range(4):
        h, p = rng.randint(2, 24), rng.randint(2, 5)
        _reach_check(fn, h, p, [rng.randint(0, 3) for _ in range(rng.randint(1, 5))], "")


register(Question("hiremlp.reach", "what happens if s = 0: how far information travels along H", "rows_reaching", (
    Check("no shift: one region", 1, lambda fn: _reach_check(
        fn, 32, 4, [0, 0, 0, 0], "with s = 0 every block uses the same regions: row 0 never leaves its region")),
    Check("the official stage-1 schedule", 1, lambda fn: _reach_check(
        fn, 32, 4, [0, 2, 0, 2],
        "walk back from the output: output row o is padded row (o + s) mod H; it reads that row's region")),
    Check("circular padding wraps", 1, lambda fn: _reach_check(
        fn, 7, 3, [0, 1], "padded copies are dropped after the MLP: only the region of row (o + s) mod H counts")),
    Check("hidden schedules", 1, _reach_hidden),
), off_limits=_REARRANGE))


# ------------------------------------------------------------------------------ 4. conv view
def _conv_check(fn, c, p, o, axis, seed, hint):
    g = _gen(seed)
    w1 = torch.randn(o, c * p, generator=g, dtype=torch.float64)
    x = torch.randn(2, c, 3 * p, 2 * p + 1, generator=g, dtype=torch.float64)
    if axis == "w":
        x = x.transpose(2, 3).contiguous()
    weight = expect_tensor(fn(w1.clone(), c, p, axis), "conv weight")
    want_shape = (o, c, p, 1) if axis == "h" else (o, c, 1, p)
    if tuple(weight.shape) != want_shape:
        raise CheckFailed(f"axis {axis!r}: the conv weight must be {want_shape}, got {tuple(weight.shape)}")
    stride = (p, 1) if axis == "h" else (1, p)
    want = torch.einsum("ok,bk...->bo...", w1, region_partition(x, p, 0, axis))
    assert_matches(F.conv2d(x, weight.to(x.dtype), stride=stride), want, atol=1e-9, rtol=1e-9,
                   what=f"conv2d(x, your weight, stride {stride}) for C={c}, p={p}, axis {axis!r}", hint=hint)


def _conv_hidden(fn):
    rng = hidden_rng(43)
    for _ in range(3):
        _conv_check(fn, rng.randint(1, 6), rng.randint(1, 5), rng.randint(1, 6), rng.choice("hw"),
                    rng.randrange(10 ** 6), "")


register(Question("hiremlp.conv_view", "the region linear as a strided convolution", "conv_weight", (
    Check("height branch", 1, lambda fn: _conv_check(
        fn, 3, 4, 5, "h", 0, "W1[o, c*p + i] multiplies row i of region: the kernel entry K[o, c, i, 0]")),
    Check("width branch", 1, lambda fn: _conv_check(fn, 3, 4, 5, "w", 1, "for the width branch the kernel is (1 x p)")),
    Check("hidden sizes", 1, _conv_hidden),
), off_limits=_REARRANGE))


# ------------------------------------------------------------------------------ 5. kernel piece
# The grader launches the reader's kernel itself, then requires the launcher to have launched it.
def _kernel_ready():
    if not (HAS_TRITON and triton_usable(torch.zeros(1))):
        raise CheckFailed("Triton is not usable here (it is Linux-only); this question needs it")


def _operand_ref(x, p, s):
    b, c, h, w = x.shape
    z = region_partition(x, p, s, "h")                              # (B, C p, G, W)
    return z.permute(0, 2, 3, 1).reshape(b * z.shape[2] * w, c * p)  # rows (b, g, w), columns (c, i)


_LAUNCH = ("gather_kernel[(cdiv(M, 16), cdiv(K, 16))](X, A, M, K, G, W, H, *x.stride(), P=p, S=s % H, "
           "BM=16, BK=16)")


def _gather_direct(fn):
    _kernel_ready()
    rng = hidden_rng(44)
    for b, c, h, w, p, s in [(2, 3, 7, 5, 3, 2), (1, 5, 8, 3, 4, 0)] + [
            (rng.randint(1, 2), rng.randint(1, 6), rng.randint(1, 9), rng.randint(1, 6), rng.randint(1, 4),
             rng.randint(0, 3)) for _ in range(2)]:
        x = _map(b, c, h, w, b + c * 10 + h * 100 + s, torch.float32)
        g = -(-h // p)
        m, k = b * g * w, c * p
        a = torch.full((m, k), float("nan"))
        out = fn.launch(((m + 15) // 16, (k + 15) // 16), x, a, m, k, g, w, h, *x.stride(), P=p, S=s % h, BM=16, BK=16)
        assert_matches(out[1], _operand_ref(x, p, s), atol=0, rtol=0,
                       what=f"what your kernel stored for B={b}, C={c}, H={h}, W={w}, p={p}, s={s}",
                       hint=f"launched as {_LAUNCH}: A[m, k] = X[b, c, (g p + i - S) mod H, w], masked m < M, k < K")


def _gather_check(fn, shape, p, s, dtype, hint, transpose=False):
    _kernel_ready()
    x = _map(*shape, sum(shape) * 7 + p + s, dtype)
    if transpose:
        x = x.transpose(2, 3)                                        # a strided view
    got = fn(x, p, s)
    fn.require_launched()
    assert_matches(got, _operand_ref(x, p, s), atol=0, rtol=0,
                   what=f"A for {tuple(x.shape)}, p={p}, s={s}, {str(dtype).replace('torch.', '')}", hint=hint)


register(Question("hiremlp.gather_kernel", "the fused kernel's gathered operand, in Triton", "gathered_operand", (
    Check("your kernel, launched by the grader", 1, _gather_direct),
    Check("shift and circular padding", 1, lambda fn: _gather_check(
        fn, (2, 3, 7, 5), 3, 2, torch.float32, "use a true modulo: (r % H + H) % H is safe for r < 0 on a GPU")),
    Check("a strided (transposed) view", 1, lambda fn: _gather_check(
        fn, (1, 4, 6, 9), 4, 1, torch.float32, "read x through its strides: pass x.stride() to the kernel",
        transpose=True)),
    Check("fp16 in, fp16 out", 1, lambda fn: _gather_check(
        fn, (2, 2, 5, 4), 2, 1, torch.float16, "A has the dtype of x")),
), time_limit=60.0, kernel="gather_kernel", forbidden=_ROLL, off_limits=_REARRANGE))
