"""Questions of ``exercises/00_preface.ipynb``.

Each check compares the reader's function with the package's reference on seeded inputs
(awkward shapes included), or tests an identity from the chapter's derivation.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...data import BACKGROUND, SceneConfig, generate
from ...train import Budget, confusion_matrix, lr_factor, metrics_from_confusion
from ..compare import assert_matches, expect_float, expect_tensor
from ..core import Check, CheckFailed, Question, hidden_generator, hidden_rng, register, require_triton

# The references below live in this module: no answer may call them (nor the package's own).
_OWN = "hrvit_edu.grading.checks.preface"


# ------------------------------------------------------------------------------ 1. mIoU
def _ref_miou(pred, target, k, ignore=255):
    return metrics_from_confusion(confusion_matrix(pred, target, k, ignore)).miou


def _maps(seed, k, shape=(2, 9, 13), ignore_frac=0.0, classes=None):
    g = torch.Generator().manual_seed(seed)
    hi = classes if classes is not None else k
    target = torch.randint(0, hi, shape, generator=g)
    noise = torch.randint(0, hi, shape, generator=g)
    pred = torch.where(torch.rand(shape, generator=g) < 0.6, target, noise)
    if ignore_frac:
        target[torch.rand(shape, generator=g) < ignore_frac] = 255
    return pred, target


def _miou_close(fn, pred, target, k, hint_fns=()):
    got = expect_float(fn(pred.clone(), target.clone(), k, 255), "mean IoU")
    want = _ref_miou(pred, target, k)
    if abs(got - want) > 1e-6:
        for cond, msg in hint_fns:
            if cond(got):
                raise CheckFailed(f"got {got:.4f}, expected {want:.4f} - {msg}")
        raise CheckFailed(f"got {got:.4f}, expected {want:.4f}")


def _pixel_acc(pred, target):
    keep = target != 255
    return (pred[keep] == target[keep]).double().mean().item()


def _miou_random(fn):
    for seed, k in [(0, 4), (1, 7), (2, 11)]:
        pred, target = _maps(seed, k)
        _miou_close(fn, pred, target, k, [
            (lambda v, p=pred, t=target: abs(v - _pixel_acc(p, t)) < 1e-6,
             "that is pixel accuracy; mIoU averages TP / (TP + FP + FN) over classes")])


def _miou_ignore(fn):
    # Same kind of maps as the first check, plus ignored pixels: a mismatch here means those
    # pixels were counted (as some class, or as hits) instead of being dropped.
    for seed, k in [(3, 5), (4, 3)]:
        pred, target = _maps(seed, k, ignore_frac=0.3)
        _miou_close(fn, pred, target, k, [
            (lambda v: True, "pixels labelled with the ignore index must be dropped before counting")])


def _miou_absent(fn):
    pred, target = _maps(5, 6, classes=3)     # classes 3, 4, 5 never occur
    present = _ref_miou(pred, target, 6)
    _miou_close(fn, pred, target, 6, [
        (lambda v: abs(v - present * 3 / 6) < 1e-6,
         "a class absent from labels and predictions has IoU 0/0: leave it out of the mean")])


def _miou_hidden(fn):
    rng, g = hidden_rng(1), hidden_generator(1)
    for _ in range(3):
        k = rng.randint(2, 12)
        shape = tuple(rng.randint(1, 9) for _ in range(rng.randint(1, 4)))
        target = torch.randint(0, k, shape, generator=g)
        pred = torch.where(torch.rand(shape, generator=g) < 0.5, target, torch.randint(0, k, shape, generator=g))
        target[torch.rand(shape, generator=g) < 0.2] = 255
        if (target != 255).sum() == 0:
            target.view(-1)[0] = 0
        _miou_close(fn, pred, target, k)


register(Question("preface.miou", "mean IoU from a confusion matrix", "mean_iou", (
    Check("random label maps", 1, _miou_random),
    Check("ignore index", 1, _miou_ignore),
    Check("absent classes", 1, _miou_absent),
    Check("hidden label maps", 1, _miou_hidden),
), off_limits=("hrvit_edu.train.metrics", "hrvit_edu.train.evaluate.evaluate", _OWN)))


# ------------------------------------------------------------------------------ 2. schedule
def _lr_ref(step, total, warmup, base, r):
    return base * lr_factor(step, Budget(steps=total, warmup_steps=warmup, min_lr_ratio=r))


def _lr_compare(fn, steps, total=100, warmup=10, base=3e-3, r=0.05, hint=""):
    for s in steps:
        got = expect_float(fn(s, total, warmup, base, r), "learning rate")
        want = _lr_ref(s, total, warmup, base, r)
        if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
            raise CheckFailed(f"at step {s} (total {total}, warm-up {warmup}) got {got:.6g}, "
                              f"expected {want:.6g}" + (f" - {hint}" if hint else ""))


def _lr_hidden(fn):
    rng = hidden_rng(2)
    for _ in range(3):
        warmup = rng.randint(1, 30)
        total = warmup + rng.randint(5, 400)
        steps = sorted(rng.sample(range(0, total + 50), 8))
        _lr_compare(fn, steps, total=total, warmup=warmup, base=rng.uniform(1e-4, 1e-1),
                    r=rng.choice([0.0, 0.01, 0.1, 0.5]))


register(Question("preface.lr_schedule", "warm-up + cosine learning rate, eq. (T1)", "warmup_cosine", (
    Check("warm-up", 1, lambda fn: _lr_compare(
        fn, [0, 4, 9], hint="warm-up is linear and reaches base_lr at step warmup-1: (step + 1) / warmup_steps")),
    Check("cosine decay", 1, lambda fn: _lr_compare(
        fn, [10, 37, 55, 80, 99], hint="cosine over t = (step - warmup) / (total - warmup)")),
    Check("floor", 1, lambda fn: _lr_compare(
        fn, [100, 150], total=100, warmup=0, r=0.1,
        hint="after the last step the rate stays at min_lr_ratio * base_lr")),
    Check("hidden schedules", 1, _lr_hidden),
), off_limits=("hrvit_edu.train.budget.lr_factor", _OWN)))


# ------------------------------------------------------------------------------ 3. boxes
def _ref_boxes(mask, background=BACKGROUND, ignore=255):
    m = np.asarray(mask)
    out = {}
    for c in np.unique(m):
        if c in (background, ignore):
            continue
        ys, xs = np.nonzero(m == c)
        out[int(c)] = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    return out


def _boxes_compare(fn, mask, hint=""):
    got = fn(torch.as_tensor(mask).clone())
    if not isinstance(got, dict):
        raise CheckFailed(f"expected a dict {{class: (y0, x0, y1, x1)}}, got {type(got).__name__}")
    want = _ref_boxes(mask)
    try:
        got = {int(k): tuple(int(v) for v in b) for k, b in got.items()}
    except (TypeError, ValueError):
        raise CheckFailed("keys must be class ids and values 4-tuples of ints (y0, x0, y1, x1)") from None
    if set(got) != set(want):
        extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        raise CheckFailed(f"classes {'with a box that should have none: ' + str(extra) if extra else ''}"
                          f"{'; ' if extra and missing else ''}"
                          f"{'missing: ' + str(missing) if missing else ''}"
                          + (f" - {hint}" if hint else ""))
    for c in sorted(want):
        if got[c] != want[c]:
            raise CheckFailed(f"class {c}: got box {got[c]}, expected {want[c]}"
                              + (f" - {hint}" if hint else ""))


def _boxes_scenes(fn):
    scenes = generate(SceneConfig(num_train=4, num_val=4, num_test=6, seed=21), "test")
    for m in scenes.masks:
        _boxes_compare(fn, m.astype(np.int64))


def _boxes_background(fn):
    m = np.full((12, 10), BACKGROUND, np.int64)
    m[0, :] = 255
    m[4:7, 2:5] = 3
    _boxes_compare(fn, m, hint=f"background ({BACKGROUND}) and ignore (255) pixels have no box")
    _boxes_compare(fn, np.full((5, 5), BACKGROUND, np.int64), hint="a scene without digits gives {}")


def _boxes_single_pixel(fn):
    m = np.full((8, 9), BACKGROUND, np.int64)
    m[3, 5] = 7
    _boxes_compare(fn, m, hint="ends are exclusive like slicing: one pixel at (3, 5) has box (3, 5, 4, 6)")


def _boxes_hidden(fn):
    rng = hidden_rng(3)
    for _ in range(4):
        h, w = rng.randint(2, 40), rng.randint(2, 40)
        m = np.full((h, w), BACKGROUND, np.int64)
        for _ in range(rng.randint(0, 6)):
            y0, x0 = rng.randrange(h), rng.randrange(w)
            y1, x1 = rng.randint(y0 + 1, h), rng.randint(x0 + 1, w)
            m[y0:y1, x0:x1] = rng.choice([rng.randrange(10), 255])
        _boxes_compare(fn, m)


register(Question("preface.digit_boxes", "bounding box of every digit class in a label map", "class_boxes", (
    Check("DigitScenes label maps", 1, _boxes_scenes),
    Check("background and ignore", 1, _boxes_background),
    Check("exclusive ends", 1, _boxes_single_pixel),
    Check("hidden label maps", 1, _boxes_hidden),
), off_limits=(_OWN,)))


# ------------------------------------------------------------------------------ 4. softmax grad
def _softmax_vjp(y, dy, dim):
    x = torch.log(y).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.softmax(x, dim), x, dy)
    return g


def _sgrad_random(fn):
    g = torch.Generator().manual_seed(7)
    for shape in [(3, 5), (2, 4, 17)]:
        y = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), -1)
        dy = torch.randn(shape, generator=g, dtype=torch.float64)
        assert_matches(fn(y, dy, -1), _softmax_vjp(y, dy, -1), atol=1e-9, rtol=1e-7, what="dx",
                       hint="eq. (S2): dx = y * (dy - sum(y * dy)) along the softmax axis")


def _sgrad_dim(fn):
    g = torch.Generator().manual_seed(8)
    y = torch.softmax(torch.randn(4, 6, 5, generator=g, dtype=torch.float64), 1)
    dy = torch.randn(4, 6, 5, generator=g, dtype=torch.float64)
    assert_matches(fn(y, dy, 1), _softmax_vjp(y, dy, 1), atol=1e-9, rtol=1e-7, what="dx",
                   hint="reduce over `dim` (with keepdim=True), not over the last axis")


def _sgrad_gradcheck(fn):
    class _Softmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.softmax(x, -1)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, dy):
            (y,) = ctx.saved_tensors
            return fn(y, dy, -1)

    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    dx = expect_tensor(_Softmax.apply(x).sum(), "output")   # any shape error surfaces here
    del dx
    try:
        ok = torch.autograd.gradcheck(_Softmax.apply, (x,), raise_exception=False)
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"gradcheck could not run: {type(e).__name__}") from None
    if not ok:
        raise CheckFailed("float64 gradcheck fails: your backward is not the derivative of softmax")
    y = torch.softmax(x.detach(), -1)
    s = fn(y, torch.randn(3, 7, dtype=torch.float64), -1).sum(-1)
    if s.abs().max() > 1e-9:
        raise CheckFailed("rows of dx must sum to 0 (softmax outputs always sum to 1)")


def _sgrad_hidden(fn):
    rng, g = hidden_rng(4), hidden_generator(4)
    for _ in range(3):
        shape = tuple(rng.randint(1, 9) for _ in range(rng.randint(1, 4)))
        dim = rng.randrange(-len(shape), len(shape))
        y = torch.softmax(3 * torch.randn(shape, generator=g, dtype=torch.float64), dim)
        dy = torch.randn(shape, generator=g, dtype=torch.float64)
        assert_matches(fn(y, dy, dim), _softmax_vjp(y, dy, dim), atol=1e-9, rtol=1e-7,
                       what=f"dx for shape {shape}, dim {dim}")


# dx needs only y and dy: recomputing a softmax, or asking autograd, is not the exercise.
_SOFTMAX_CALLS = ("torch.softmax", "torch._softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax",
                  "torch.log_softmax", "torch.Tensor.log_softmax", "torch.nn.functional.log_softmax",
                  "torch._softmax_backward_data", "torch.ops.hrvit_edu.softmax_rows_backward")

register(Question("preface.softmax_grad", "softmax backward, eq. (S2)", "softmax_backward", (
    Check("random inputs", 1, _sgrad_random),
    Check("any axis", 1, _sgrad_dim),
    Check("gradcheck and zero-sum identity", 1, _sgrad_gradcheck),
    Check("hidden shapes and axes", 1, _sgrad_hidden),
), forbidden=_SOFTMAX_CALLS, off_limits=("hrvit_edu.kernels.softmax", _OWN)))


# ------------------------------------------------------------------------------ 5. kernel
# The checks launch the reader's @triton.jit kernel themselves (our grid, our buffers), then call
# the launcher and require that it launched that kernel: plain torch cannot pass either.
EPS = 1e-6


def _l2_ref(x):
    xf = x.float()
    return (xf / xf.norm(dim=-1, keepdim=True).clamp_min(EPS)).to(x.dtype)


def _block(n):
    return 1 << max(4, (n - 1).bit_length())


def _l2_launch(fn, x, hint):
    y = torch.full_like(x, float("nan"))
    out = fn.launch((x.shape[0],), x, y, x.shape[1], x.stride(0), y.stride(0), EPS, BLOCK=_block(x.shape[1]))
    assert_matches(out[1], _l2_ref(x), atol=1e-5, rtol=1e-4,
                   what=f"what your kernel stored for shape {tuple(x.shape)}", hint=hint)


def _l2_kernel_direct(fn):
    require_triton()
    rng, g = hidden_rng(5), hidden_generator(5)
    shapes = [(3, 17), (2, 16)] + [(rng.randint(1, 6), rng.randint(1, 70)) for _ in range(2)]
    for shape in shapes:
        _l2_launch(fn, torch.randn(shape, generator=g),
                   "launched as l2norm_kernel[(rows,)](X, Y, n_cols, stride_x, stride_y, eps, BLOCK=...): "
                   "mask = cols < n_cols, one program per row")


def _l2_launcher(fn, x, what, hint, atol=1e-5):
    got = fn(x.clone())
    fn.require_launched()
    assert_matches(got, _l2_ref(x), atol=atol, rtol=atol, what=what, hint=hint)


def _l2_odd(fn):
    require_triton()
    g = torch.Generator().manual_seed(9)
    for shape in [(3, 17), (5, 100), (1, 1)]:
        _l2_launcher(fn, torch.randn(shape, generator=g), f"output for shape {shape}",
                     "lanes past the row's end must be masked (mask = cols < n_cols, other=0)")


def _l2_zero(fn):
    require_triton()
    x = torch.randn(4, 20)
    x[1] = 0.0
    _l2_launcher(fn, x, "output with an all-zero row", "divide by max(norm, eps)")


def _l2_half(fn):
    require_triton()
    _l2_launcher(fn, torch.randn(6, 33).half(), "fp16 output",
                 "upcast to fp32 on load and cast back on store", atol=2e-3)


register(Question("preface.l2norm_kernel", "a Triton row kernel: L2-normalise each row", "l2_normalize_rows", (
    Check("your kernel, launched by the grader", 1, _l2_kernel_direct),
    Check("odd row lengths", 1, _l2_odd),
    Check("zero rows", 1, _l2_zero),
    Check("fp16 in, fp16 out", 1, _l2_half),
), time_limit=60.0, kernel="l2norm_kernel",
    forbidden=("torch.norm", "torch.Tensor.norm", "torch.linalg.norm", "torch.linalg.vector_norm",
               "torch.nn.functional.normalize"), off_limits=(_OWN,)))
