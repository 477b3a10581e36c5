"""Questions of ``exercises/00_preface.ipynb``.

Each check compares the reader's function with the package's reference on seeded inputs
(awkward shapes included), or tests an identity from the chapter's derivation.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...data import BACKGROUND, SceneConfig, generate
from ...kernels import HAS_TRITON, triton_usable
from ...train import Budget, confusion_matrix, lr_factor, metrics_from_confusion
from ..compare import assert_matches, expect_float, expect_tensor
from ..core import Check, CheckFailed, Question, register


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


register(Question("preface.miou", "mean IoU from a confusion matrix", "mean_iou", (
    Check("random label maps", 1, _miou_random),
    Check("ignore index", 1, _miou_ignore),
    Check("absent classes", 1, _miou_absent),
)))


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


register(Question("preface.lr_schedule", "warm-up + cosine learning rate, eq. (T1)", "warmup_cosine", (
    Check("warm-up", 1, lambda fn: _lr_compare(
        fn, [0, 4, 9], hint="warm-up is linear and reaches base_lr at step warmup-1: (step + 1) / warmup_steps")),
    Check("cosine decay", 1, lambda fn: _lr_compare(
        fn, [10, 37, 55, 80, 99], hint="cosine over t = (step - warmup) / (total - warmup)")),
    Check("floor", 1, lambda fn: _lr_compare(
        fn, [100, 150], total=100, warmup=0, r=0.1,
        hint="after the last step the rate stays at min_lr_ratio * base_lr")),
)))


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


register(Question("preface.digit_boxes", "bounding box of every digit class in a label map", "class_boxes", (
    Check("DigitScenes label maps", 1, _boxes_scenes),
    Check("background and ignore", 1, _boxes_background),
    Check("exclusive ends", 1, _boxes_single_pixel),
)))


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


register(Question("preface.softmax_grad", "softmax backward, eq. (S2)", "softmax_backward", (
    Check("random inputs", 1, _sgrad_random),
    Check("any axis", 1, _sgrad_dim),
    Check("gradcheck and zero-sum identity", 1, _sgrad_gradcheck),
)))


# ------------------------------------------------------------------------------ 5. kernel
EPS = 1e-6


def _l2_ref(x):
    xf = x.float()
    return (xf / xf.norm(dim=-1, keepdim=True).clamp_min(EPS)).to(x.dtype)


def _needs_kernel_runtime():
    if not (HAS_TRITON and triton_usable(torch.zeros(1))):
        raise CheckFailed("Triton is not usable here (it is Linux-only); this question needs it")


def _l2_odd(fn):
    _needs_kernel_runtime()
    g = torch.Generator().manual_seed(9)
    for shape in [(3, 17), (5, 100), (1, 1)]:
        x = torch.randn(shape, generator=g)
        assert_matches(fn(x.clone()), _l2_ref(x), atol=1e-5, rtol=1e-4, what=f"output for shape {shape}",
                       hint="lanes past the row's end must be masked (mask = cols < n_cols, other=0)")


def _l2_zero(fn):
    _needs_kernel_runtime()
    x = torch.randn(4, 20)
    x[1] = 0.0
    assert_matches(fn(x.clone()), _l2_ref(x), atol=1e-5, rtol=1e-4,
                   what="output with an all-zero row", hint="divide by max(norm, eps)")


def _l2_half(fn):
    _needs_kernel_runtime()
    x = torch.randn(6, 33).half()
    assert_matches(fn(x.clone()), _l2_ref(x), atol=2e-3, rtol=2e-3, what="fp16 output",
                   hint="upcast to fp32 on load and cast back on store")


register(Question("preface.l2norm_kernel", "a Triton row kernel: L2-normalise each row", "l2_normalize_rows", (
    Check("odd row lengths", 1, _l2_odd),
    Check("zero rows", 1, _l2_zero),
    Check("fp16 in, fp16 out", 1, _l2_half),
), time_limit=60.0))
