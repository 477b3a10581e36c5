"""Questions of ``exercises/04_hiremlp.ipynb``: the partition with shift and circular padding as
storage offsets (the fused kernel's address arithmetic), its inverse, the reach of a shift
schedule ("what happens if"), the second linear plus the inverse rearrangement as a transposed
convolution and a gather, and the adjoint of the kernel's gathered load (dX, every
circular-padding copy summed, no atomics) in Triton.  References live here and in the package's
Hire-MLP module (which the answers may not call)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...models.hire_mlp import region_partition, region_restore
from ..compare import assert_matches, expect_tensor
from ..core import Check, CheckFailed, Question, hidden_rng, register, require_triton

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
def _storage_of(x):
    """The whole storage under ``x``, as a 1-D tensor of x's dtype."""
    return torch.empty(0, dtype=x.dtype).set_(x.untyped_storage())


def _view(shape, seed, kind):
    """A map of ``shape`` that is contiguous, a transposed view, or a transposed view of a crop
    (strides that are not a permutation of a contiguous layout, and a storage offset)."""
    b, c, h, w = shape
    if kind == "contiguous":
        return _map(b, c, h, w, seed)
    if kind == "transposed":
        return _map(b, c, w, h, seed).transpose(2, 3)
    return _map(b + 1, c + 2, w + 3, h + 1, seed).transpose(2, 3)[1:, 1:c + 1, 1:, 2:w + 2]


def _part_check(fn, shape, p, s, kind, hint):
    x = _view(shape, sum(shape) * 13 + p + 100 * s, kind)
    got = expect_tensor(fn(tuple(x.shape), x.stride(), x.storage_offset(), p, s), "offsets")
    want_shape = (shape[0], shape[1] * p, -(-shape[2] // p), shape[3])
    if got.dtype != torch.int64 or tuple(got.shape) != want_shape:
        raise CheckFailed(f"return int64 offsets of shape (B, C p, H'/p, W) = {want_shape}, "
                          f"got {got.dtype} {tuple(got.shape)}")
    storage = _storage_of(x)
    if bool((got < 0).any()) or bool((got >= storage.numel()).any()):
        raise CheckFailed(f"offsets outside the storage (0..{storage.numel() - 1}) for {kind} x of shape "
                          f"{tuple(x.shape)}, strides {x.stride()}, storage offset {x.storage_offset()}. {hint}")
    assert_matches(storage[got], region_partition(x, p, s, "h"), atol=0, rtol=0,
                   what=f"storage[offsets] for a {kind} x {tuple(x.shape)}, p={p}, s={s}", hint=hint)


def _part_hidden(fn):
    rng = hidden_rng(40)
    for kind in ("contiguous", "transposed", "cropped"):
        h = rng.randint(1, 12)
        _part_check(fn, (rng.randint(1, 2), rng.randint(1, 4), h, rng.randint(1, 5)), rng.randint(1, 5),
                    rng.randint(0, 2 * h), kind, "")


_PART_HINT = ("Z[b, c p + i, g, w] = X[b, c, (g p + i - s) mod H, w], and X[b, c, h, w] lives at "
              "storage_offset + b sb + c sc + h sh + w sw")
register(Question("hiremlp.partition", "the shifted, padded partition as storage offsets, (4.1)-(4.2)",
                  "partition_offsets", (
    Check("contiguous, p divides H, no shift", 1, lambda fn: _part_check(fn, (2, 3, 8, 5), 4, 0, "contiguous",
                                                                         _PART_HINT)),
    Check("with a shift", 1, lambda fn: _part_check(
        fn, (2, 3, 8, 5), 4, 2, "contiguous", "padded row r reads input row (r - s) mod H: the shift is +s")),
    Check("circular padding, padding longer than the map", 1, lambda fn: _part_check(
        fn, (1, 2, 2, 3), 5, 1, "contiguous",
        "every padded row r < H' reads row (r - s) mod H: with p > H the padding wraps more than once")),
    Check("a strided view with a storage offset", 1, lambda fn: _part_check(
        fn, (2, 3, 7, 4), 3, 2, "cropped", "use the strides and the storage offset you are given, "
                                          "not the ones of a contiguous tensor")),
    Check("hidden sizes and layouts", 1, _part_hidden),
), off_limits=_REARRANGE))


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


# ------------------------------------------------------------------------------ 4. restore as a conv
def _restore_conv_check(fn, c, p, o, size, other, s, axis, seed, hint):
    """The grader computes conv_transpose2d(h, kernel, stride).index_select(axis, rows): it must equal
    the second linear W_2 h followed by the inverse rearrangement (region_restore)."""
    g = _gen(seed)
    w2 = torch.randn(c * p, o, generator=g, dtype=torch.float64)
    n = -(-size // p)
    shape = (2, o, n, other) if axis == "h" else (2, o, other, n)
    h = torch.randn(*shape, generator=g, dtype=torch.float64)
    got = fn(w2.clone(), c, p, s, size, axis)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise CheckFailed("return a pair (kernel, rows)")
    kernel, rows = expect_tensor(got[0], "kernel"), expect_tensor(got[1], "rows")
    want_shape = (o, c, p, 1) if axis == "h" else (o, c, 1, p)
    if tuple(kernel.shape) != want_shape:
        raise CheckFailed(f"axis {axis!r}: conv_transpose2d's kernel is (in, out, kH, kW) = {want_shape}, "
                          f"got {tuple(kernel.shape)}")
    what = "rows" if axis == "h" else "columns"
    if rows.dtype != torch.int64 or tuple(rows.shape) != (size,):
        raise CheckFailed(f"rows must be an int64 vector of the {size} output {what} (the map is cropped back to "
                          f"its size), got {rows.dtype} {tuple(rows.shape)}")
    dim, stride = (2, (p, 1)) if axis == "h" else (3, (1, p))
    if bool((rows < 0).any()) or bool((rows >= n * p).any()):
        raise CheckFailed(f"every index must be one of the {n * p} padded {what}, got {rows.tolist()}")
    conv = F.conv_transpose2d(h, kernel.to(h.dtype), stride=stride).index_select(dim, rows)
    want = region_restore(torch.einsum("ko,bo...->bk...", w2, h), p, size, s, axis)
    label = "H" if axis == "h" else "W"
    assert_matches(conv, want, atol=1e-9, rtol=1e-9, what=f"for C={c}, {label}={size}, p={p}, s={s}, {axis!r}",
                   hint=hint)


def _restore_conv_hidden(fn):
    rng = hidden_rng(43)
    for _ in range(3):
        size = rng.randint(1, 11)
        _restore_conv_check(fn, rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 5), size, rng.randint(1, 4),
                            rng.randint(0, 2 * size), rng.choice("hw"), rng.randrange(10 ** 6), "")


register(Question("hiremlp.restore_conv", "the second linear and the inverse rearrangement as a transposed "
                  "convolution and a gather", "restore_conv", (
    Check("height branch, shift and circular padding", 1, lambda fn: _restore_conv_check(
        fn, 3, 3, 5, 7, 4, 2, "h", 0, "channel c p + i of W_2 h is padded row g p + i: kernel[o, c, i, 0] = "
                                      "W2[c p + i, o]; output row r is padded row (r + s) mod H")),
    Check("width branch", 1, lambda fn: _restore_conv_check(
        fn, 2, 4, 3, 9, 3, 3, "w", 1, "for the width branch the kernel is (O, C, 1, p) and the gather picks "
                                      "columns")),
    Check("padding longer than the map, shift past H", 1, lambda fn: _restore_conv_check(
        fn, 2, 5, 3, 2, 3, 5, "h", 2, "p > H: keep the first H padded rows, then undo the roll: (r + s) mod H")),
    Check("hidden sizes", 1, _restore_conv_hidden),
), off_limits=_REARRANGE))


# ------------------------------------------------------------------------------ 5. kernel piece
# The adjoint of the fused kernel's gathered load.  Four of the five points come from launches the
# grader makes itself, into NaN-poisoned buffers; the last requires the launcher to launch it.
def _operand_ref(x, p, s):
    b, c, h, w = x.shape
    z = region_partition(x, p, s, "h")                              # (B, C p, G, W)
    return z.permute(0, 2, 3, 1).reshape(b * z.shape[2] * w, c * p)  # rows (b, g, w), columns (c, i)


def _operand_grad_ref(da, shape, p, s):
    """dX = (dA/dX)^T dA by autograd of the gather, in fp64."""
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    _operand_ref(x, p, s).backward(da.to(torch.float64))
    return x.grad


_SCATTER_HINT = ("row n = (b, h, w) of dX sums dA[(b, g, w), c p + i] over every padded row r = g p + i with "
                 "(r - S) mod H = h, written through the strides given (a transposed view)")


def _scatter_launch(fn, shape, p, s, da, hint, tol):
    """Launch the reader's kernel on our buffers: DX a NaN-filled transposed view."""
    require_triton()
    b, c, h, w = shape
    g = -(-h // p)
    n = b * h * w
    dx = torch.full((b, c, w, h), float("nan"), dtype=da.dtype).transpose(2, 3)
    out = fn.launch(((n + 15) // 16, (c + 15) // 16), da, dx, n, c, g, w, h, *dx.stride(), P=p, S=s % h,
                    NREP=-(-g * p // h), BN=16, BC=16)[1]
    label = f"B={b}, C={c}, H={h}, W={w}, p={p}, s={s}, {str(da.dtype).replace('torch.', '')}"
    bad = torch.isnan(out)
    if bool(bad.any()):
        first = [int(v) for v in torch.nonzero(bad)[0]]
        raise CheckFailed(f"{label}: dX{first} was never written (or was read before it was written): the "
                          "grader's buffer starts as NaN; store every element exactly once, masked, without atomics")
    want = _operand_grad_ref(da, shape, p, s)
    if da.dtype == torch.float16:
        want = want.to(torch.float16).to(torch.float64)            # the exact sum, rounded once
    assert_matches(out.to(torch.float64), want, atol=tol, rtol=tol, what=label, hint=hint)


def _da(shape, p, seed, dtype=torch.float32):
    b, c, h, w = shape
    return _map(1, 1, b * -(-h // p) * w, c * p, seed, dtype)[0, 0]


def _scatter_direct(fn):
    for shape_p_s in [(2, 3, 7, 5, 3, 2), (1, 17, 8, 3, 4, 0)] + _cases(hidden_rng(44), 2):
        shape, p, s = shape_p_s[:4], *shape_p_s[4:]
        _scatter_launch(fn, shape, p, s, _da(shape, p, sum(shape_p_s)), _SCATTER_HINT, 1e-5)


def _scatter_fp16(fn):
    """H = 1, p = 8: each input row has 8 copies; dA is 2048 on the first copy and 1 on the other
    seven.  Summed in fp32 and rounded once: 2056; accumulated in fp16: 2048 + 1 rounds back to 2048."""
    shape, p = (2, 3, 1, 4), 8
    da = torch.ones(2 * 1 * 4, 3 * 8, dtype=torch.float16)
    da[:, ::8] = 2048.0
    _scatter_launch(fn, shape, p, 0, da, "accumulate in fp32 (2048 + 1 is 2048 in fp16), store in DX's dtype",
                    1e-3)


def _cases(rng, n):
    return [(rng.randint(1, 2), rng.randint(1, 6), rng.randint(1, 9), rng.randint(1, 6), rng.randint(1, 5),
             rng.randint(0, 9)) for _ in range(n)]


def _scatter_launcher(fn):
    require_triton()
    for shape_p_s in _cases(hidden_rng(45), 2):
        shape, p, s = shape_p_s[:4], *shape_p_s[4:]
        da = _da(shape, p, sum(shape_p_s) + 1)
        got = expect_tensor(fn(da, shape, p, s), "dX")
        fn.require_launched()
        if got.dtype != da.dtype or tuple(got.shape) != shape:
            raise CheckFailed(f"dX must be {shape} in the dtype of dA, got {got.dtype} {tuple(got.shape)}")
        assert_matches(got.to(torch.float64), _operand_grad_ref(da, shape, p, s), atol=1e-5, rtol=1e-5,
                       what=f"operand_grad for {shape}, p={p}, s={s}", hint="")


register(Question("hiremlp.scatter_kernel", "the adjoint of the gathered operand (dX), in Triton, without atomics",
                  "operand_grad", (
    Check("your kernel, launched by the grader", 2, _scatter_direct),
    Check("every circular-padding copy summed", 1, lambda fn: _scatter_launch(
        fn, (2, 3, 2, 4), 5, 1, _da((2, 3, 2, 4), 5, 7),
        "p > H: an input row appears in the padded map up to NREP = cdiv(H', H) times, at r = (h + S) mod H + j H "
        "for every j with r < H'; sum them all", 1e-5)),
    Check("fp16 in and out, fp32 accumulation", 1, _scatter_fp16),
    Check("your launcher, hidden sizes", 1, _scatter_launcher),
), time_limit=60.0, kernel="scatter_kernel", forbidden=_ROLL, off_limits=_REARRANGE, no_atomics=True))
