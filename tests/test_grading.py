"""CI proof that grades mean something: solutions score 100%, stubs 0, wrong answers lose points."""
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hrvit_edu.grading import Check, Question, check, get_question, grade_function, questions, run_question
from hrvit_edu.grading.assign import make_student, pairs, strip_solutions

ROOT = Path(__file__).resolve().parents[1]
MASTERS = sorted((ROOT / "exercises" / "solutions").glob("*.ipynb"))


def _grade(path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hrvit_edu.grading", str(path), "--json"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.name)
def test_reference_solutions_score_full_marks(master):
    report, _ = _grade(master)
    assert report["max_score"] > 0 and len(report["questions"]) >= 3
    assert report["score"] == report["max_score"], report


@pytest.mark.slow
@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.name)
def test_stubs_score_zero_without_raising(master):
    report, seconds = _grade(ROOT / "exercises" / master.name)
    assert report["score"] == 0
    for q in report["questions"]:          # --invert: no check passes on a stub
        assert q["points"] == 0 and q["messages"] and q["messages"][0].startswith("not attempted yet")
        assert set(q) >= {"id", "points", "max_points", "messages"}
    assert seconds < 300


@pytest.mark.parametrize("chapter, minimum", [("preface", 3), ("hrvit", 4), ("rtformer", 5), ("capstone", 4)])
def test_every_question_has_checks_worth_points(chapter, minimum):
    qs = questions(chapter)
    assert len(qs) >= minimum
    for q in qs:
        assert q.max_points >= 2 and all(c.points > 0 for c in q.checks)


# ------------------------------------------------------------------ plausible wrong answers
def _miou_pixel_acc(pred, target, k, ignore=255):
    keep = target != ignore
    return (pred[keep] == target[keep]).double().mean().item()


def _miou_no_ignore(pred, target, k, ignore=255):
    cm = torch.zeros(k, k)
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        cm[min(t, k - 1), p] += 1
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return (tp[union > 0] / union[union > 0]).mean().item()


def _miou_absent_as_zero(pred, target, k, ignore=255):
    keep = target != ignore
    p, t = pred[keep], target[keep]
    ious = []
    for c in range(k):
        inter = ((p == c) & (t == c)).sum().item()
        union = ((p == c) | (t == c)).sum().item()
        ious.append(inter / union if union else 0.0)
    return sum(ious) / k


def _lr_off_by_one(step, total, warmup, base, r):
    if step < warmup:
        return base * step / warmup
    u = min(1.0, (step - warmup) / (total - warmup))
    return base * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * u)))


def _lr_no_floor(step, total, warmup, base, r):
    if step < warmup:
        return base * (step + 1) / warmup
    u = (step - warmup) / (total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * u))


def _boxes_inclusive(mask):
    out = {}
    for c in torch.unique(mask).tolist():
        if c in (10, 255):
            continue
        ys, xs = torch.nonzero(mask == c, as_tuple=True)
        out[c] = (ys.min().item(), xs.min().item(), ys.max().item(), xs.max().item())
    return out


def _boxes_with_background(mask):
    out = {}
    for c in torch.unique(mask).tolist():
        ys, xs = torch.nonzero(mask == c, as_tuple=True)
        out[c] = (ys.min().item(), xs.min().item(), ys.max().item() + 1, xs.max().item() + 1)
    return out


def _sgrad_missing_term(y, dy, dim=-1):
    return y * dy


def _sgrad_last_axis(y, dy, dim=-1):
    return y * (dy - (y * dy).sum(-1, keepdim=True))


# Kernel questions: the wrong answers are real Triton kernels with one bug each, in
# grading_kernels.py (a torch-only answer is refused outright, see test_grading_integrity.py).
from grading_kernels import (  # noqa: E402
    column_lse_kernel_no_max,
    column_lse_launcher,
    em_assign_kernel_on_grid_only,
    em_assign_launcher,
    l2_kernel_l1,
    l2_kernel_no_eps,
    l2_kernel_ok,
    l2_launcher,
    right_kernel_no_bias,
    right_launcher,
    scatter_kernel_atomic,
    scatter_kernel_first_copy,
    scatter_kernel_fp16_acc,
    scatter_launcher,
    window_logits_kernel_clamped,
    window_logits_launcher,
)


def _counts_no_mask(h, w, k, p):                  # every query counted as seeing k^2 window keys
    return torch.full((h * w,), float(k * k + p))


def _counts_shifted(h, w, k, p):                  # windows shifted inward: k^2 keys whenever the map allows
    return torch.full((h * w,), float(min(k, h) * min(k, w) + p))


def _lsca_scaled_bias(q, k, v, tau, e, bias):     # multiplies the bias by tau ln N too
    n = k.shape[2]
    qh, kh = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return torch.softmax(((qh + e[None, :, None]) @ kh.transpose(-1, -2) + bias[None])
                         * (tau * math.log(n))[None, :, None, None], -1) @ v


def _lsca_no_normalise(q, k, v, tau, e, bias):    # dot product instead of cosine
    n = k.shape[2]
    return torch.softmax((q + e[None, :, None]) @ k.transpose(-1, -2) * (tau * math.log(n))[None, :, None, None]
                         + bias[None], -1) @ v


def _pool_before_gelu(x, hw, w_sr, b_sr, ln_w, ln_b, pool_hw):    # pools, then activates
    b, n, c = x.shape
    m = (x @ w_sr.T + b_sr).transpose(1, 2).reshape(b, c, *hw)
    pooled = F.gelu(F.adaptive_avg_pool2d(m, pool_hw)).flatten(2).transpose(1, 2)
    return F.layer_norm(pooled, (c,), ln_w, ln_b, eps=1e-5)


def _glu_conv_on_value(x, hw, w1, b1, dw_w, dw_b, w2, b2):       # the depthwise conv on u, not the gate
    b, n, c = x.shape
    hid = w1.shape[0] // 2
    g, u = (x @ w1.T + b1).chunk(2, -1)
    u = F.conv2d(u.transpose(1, 2).reshape(b, hid, *hw), dw_w, dw_b, padding=1, groups=hid).flatten(2).transpose(1, 2)
    return (F.gelu(g) * u) @ w2.T + b2


def _mult_fixed_pool(img, patch, sr, k=3, tau=1 / 0.24):          # P frozen at the 224 value (7 x 7)
    return tuple(tau * math.log(n + 49) for n in (4, 6, 9))


def _kron_no_transpose(A, B, x):
    X = x.reshape(*x.shape[:-1], A.shape[0], B.shape[0])
    return (A @ X @ B).reshape(x.shape)


def _kron_einsum_materialised(A, B, x):           # right values, but forms A kron B without torch.kron
    return x @ torch.einsum("ij,kl->ikjl", A, B).reshape(A.shape[0] * B.shape[0], -1).T


def _kron_no_batch(A, B, x):
    return (A @ x.reshape(A.shape[0], B.shape[0]) @ B.T).reshape(-1)


def _des_relu(x, A, bA, B, bB):
    X = x.reshape(*x.shape[:-1], A.shape[0], B.shape[0])
    return (A @ torch.relu(X @ B.T + bB) + bA[:, None]).reshape(x.shape)


def _des_no_act(x, A, bA, B, bB):
    X = x.reshape(*x.shape[:-1], A.shape[0], B.shape[0])
    return (A @ (X @ B.T + bB) + bA[:, None]).reshape(x.shape)


def _stripes_row_major_vertical(x, s, o):
    """Right for 'h'; for 'v' the tokens of a stripe come out row-major instead of column-major."""
    b, h, w, c = x.shape
    if o == "h":
        n = -(-h // s)
        xp = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, n * s - h))
        return xp.reshape(b * n, s * w, c), torch.tensor([min(s, h - i * s) * w for i in range(n)] * b)
    n = -(-w // s)
    xp = torch.nn.functional.pad(x, (0, 0, 0, n * s - w))
    win = xp.reshape(b, h, n, s, c).permute(0, 2, 1, 3, 4).reshape(b * n, s * h, c)
    return win, torch.tensor([min(s, w - i * s) * h for i in range(n)] * b)


def _waste_horizontal_only(h, w, s):
    n = -(-h // s)
    return 1 - sum((min(s, h - g * s) * w) ** 2 for g in range(n)) / (n * (s * w) ** 2)


def _waste_padded_tokens(h, w, s):       # counts tokens, not logits
    return 1 - 2 * h * w / (-(-h // s) * s * w + -(-w // s) * s * h)


def _fuse_relu(hi, lo, p):
    def aff(x, sc_sh):
        return x * sc_sh[0][:, None, None] + sc_sh[1][:, None, None]
    up = aff(F.conv2d(lo, p["up_pw"], p["up_pw_bias"]), p["up_bn"]).repeat_interleave(2, -2).repeat_interleave(2, -1)
    down = aff(F.conv2d(hi, p["down_dw"], stride=2, padding=1, groups=hi.shape[1]), p["down_bn1"])
    down = aff(F.conv2d(down, p["down_pw"], p["down_pw_bias"]), p["down_bn2"])
    return [torch.relu(hi + up), torch.relu(down + lo)]


def _offsets(size, stride, offset, p, s, shift=True, strides=True):
    b, c, h, w = size
    if not strides:                               # the strides of a contiguous tensor, no offset
        stride, offset = (c * h * w, h * w, w, 1), 0
    rows = (torch.arange(-(-h // p) * p) - (s if shift else 0)) % h
    sb, sc, sh, sw = stride
    x = (offset + torch.arange(b)[:, None, None, None] * sb + torch.arange(c)[None, :, None, None] * sc
         + rows[None, None, :, None] * sh + torch.arange(w)[None, None, None, :] * sw)
    return x.reshape(b, c, -1, p, w).transpose(2, 3).reshape(b, c * p, -1, w)


def _part_no_shift(size, stride, offset, p, s):   # ignores the cross-region shift
    return _offsets(size, stride, offset, p, s, shift=False)


def _part_contiguous(size, stride, offset, p, s):  # assumes a contiguous tensor
    return _offsets(size, stride, offset, p, s, strides=False)


def _restore_no_crop(z, p, h, s):                # keeps the padded rows
    b, cp, g, w = z.shape
    x = z.reshape(b, cp // p, p, g, w).transpose(2, 3).reshape(b, cp // p, g * p, w)
    return x[:, :, (torch.arange(g * p) + s) % (g * p)]


def _reach_ignores_shift(h, p, shifts):
    return list(range(min(p, h)))


def _reach_keeps_padded_copies(h, p, shifts):   # joins a region through a padded copy whose output is dropped
    reach = {0}
    for s in reversed(shifts):
        src = [(r - s) % h for r in range(-(-h // p) * p)]
        reach = set().union(*(set(src[g * p:(g + 1) * p]) for g in range(len(src) // p)
                              if set(src[g * p:(g + 1) * p]) & reach))
    return sorted(reach)


def _rc_kernel(w2, c, p, axis):
    k = w2.T.reshape(w2.shape[1], c, p)
    return k[:, :, :, None] if axis == "h" else k[:, :, None, :]


def _rc_rows_forward_direction(w2, c, p, s, size, axis):   # the forward's (r - s): rolls the wrong way back
    return _rc_kernel(w2, c, p, axis), (torch.arange(size) - s) % size


def _rc_conv2d_layout(w2, c, p, s, size, axis):            # conv2d's (out, in, kH, kW) layout
    k = w2.reshape(c, p, w2.shape[1]).transpose(1, 2)
    return (k[:, :, :, None] if axis == "h" else k[:, :, None, :]), (torch.arange(size) + s) % size


def _rc_no_crop(w2, c, p, s, size, axis):                  # keeps the padded rows
    hp = -(-size // p) * p
    return _rc_kernel(w2, c, p, axis), (torch.arange(hp) + s) % hp


def _dn_over_slots(a, groups, eps=1e-6):          # the self-attention habit: softmax over the slots
    b, m, n = a.shape
    s = a.softmax(dim=1).reshape(b, groups, m // groups, n)
    return (s / (s.sum(dim=2, keepdim=True) + eps)).reshape(b, m, n)


def _dn_no_eps(a, groups, eps=1e-6):              # drops the epsilon
    b, m, n = a.shape
    s = a.softmax(dim=-1).reshape(b, groups, m // groups, n)
    return (s / s.sum(dim=2, keepdim=True)).reshape(b, m, n)


def _dn_ignores_groups(a, groups, eps=1e-6):      # one L1 over all M slots
    s = a.softmax(dim=-1)
    return s / (s.sum(dim=1, keepdim=True) + eps)


def _pool_bins(xn, s, reduce):                   # adaptive bins by hand (torch's pools are forbidden)
    h, w = xn.shape[-2:]
    return torch.stack([reduce(xn[:, :, i * h // s:-(-(i + 1) * h // s), j * w // s:-(-(j + 1) * w // s)])
                        for i in range(s) for j in range(s)], dim=-1)


def _kv_avg_pool(x_l, mean, var, gamma, beta, w_kv, s):
    xn = F.batch_norm(x_l, mean, var, gamma, beta, False, 0.0, 1e-5)
    kv = torch.einsum("oc,bcj->boj", w_kv, _pool_bins(xn, s, lambda t: t.mean(dim=(2, 3))))
    return kv[:, :w_kv.shape[0] // 2], kv[:, w_kv.shape[0] // 2:]


def _kv_swapped(x_l, mean, var, gamma, beta, w_kv, s):
    xn = F.batch_norm(x_l, mean, var, gamma, beta, False, 0.0, 1e-5)
    kv = torch.einsum("oc,bcj->boj", w_kv, _pool_bins(xn, s, lambda t: t.amax(dim=(2, 3))))
    return kv[:, w_kv.shape[0] // 2:], kv[:, :w_kv.shape[0] // 2]


def _mh_dense(k_head, v_head, heads, c_in, c_out):  # every group reads every channel slice
    return k_head.repeat(heads, heads), v_head.repeat(heads, heads)


def _mh_contiguous(k_head, v_head, heads, c_in, c_out):  # the chapter's contiguous heads, not interleaved
    return torch.block_diag(*[k_head] * heads), torch.block_diag(*[v_head] * heads)


def _kv_adaptive(x_l, mean, var, gamma, beta, w_kv, s):  # torch's adaptive pool: forbidden here
    xn = F.batch_norm(x_l, mean, var, gamma, beta, False, 0.0, 1e-5)
    kv = torch.einsum("oc,bcj->boj", w_kv, F.adaptive_max_pool2d(xn, s).flatten(2))
    return kv[:, :w_kv.shape[0] // 2], kv[:, w_kv.shape[0] // 2:]


def _keys_min(h, w, s):                           # assumes a pixel per bin when s > n
    return min(h, s) * min(w, s)


# ------------------------------------------------------------------ chapter 05 wrong answers
def _loc_round(grid, clusters, lam):                  # rounds the cell coordinate instead of flooring
    (hh, ww), (h, w), r = grid, clusters, lam // 2
    u = torch.round(torch.arange(hh) * h / hh).long()[:, None].expand(hh, ww).flatten()
    v = torch.round(torch.arange(ww) * w / ww).long()[None, :].expand(hh, ww).flatten()
    cu, cv = torch.arange(h * w) // w, torch.arange(h * w) % w
    return ((u[:, None] - cu[None, :]).abs() <= r) & ((v[:, None] - cv[None, :]).abs() <= r)


def _em_naive_exp(x, c, allowed, t):                   # exp without the max shift: underflows to 0 / 0
    d = ((x[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)
    e = torch.exp(-t * d) * allowed
    q = e / e.sum(-1, keepdim=True)
    return q, (q.transpose(1, 2) @ x) / q.sum(1).clamp_min(1e-16)[..., None]


def _em_no_clamp(x, c, allowed, t):                    # 0 / 0 for a centre nobody may join
    d = ((x[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)
    q = (-t * d).masked_fill(~allowed, float("-inf")).softmax(-1)
    return q, (q.transpose(1, 2) @ x) / q.sum(1)[..., None]


def _tk_unstabilised(x_a, c_a, t, k, norm):             # the official code: rows can underflow
    d = ((x_a[:, :, None, :] - c_a[:, None, :, :]) ** 2).sum(-1)
    w = torch.exp(-t * d)
    kth = w.topk(min(k, w.shape[-1]), dim=-1).values[..., -1:]
    w = torch.where(w >= kth, w, torch.zeros_like(w))
    return w / (w.norm(dim=-1, keepdim=True) if norm == "l2" else w.sum(-1, keepdim=True))


def _tk_exactly_k(x_a, c_a, t, k, norm):                # scatter of topk indices: ties beyond k dropped
    d = ((x_a[:, :, None, :] - c_a[:, None, :, :]) ** 2).sum(-1)
    w = torch.exp(-t * (d - d.amin(-1, keepdim=True)))
    top = w.topk(min(k, w.shape[-1]), dim=-1)
    w = torch.zeros_like(w).scatter(-1, top.indices, top.values)
    return w / (w.norm(dim=-1, keepdim=True) if norm == "l2" else w.sum(-1, keepdim=True))


def _mf_no_cls(depth, alpha, n, m, c):                  # forgets the CLS token
    blk = lambda t: 12 * t * c * c + 2 * t * t * c      # noqa: E731
    return (alpha * blk(n) + (depth - alpha) * blk(m)) / (depth * blk(n))


def _mf_no_attention(depth, alpha, n, m, c):            # counts only the 12 n C^2 term
    return (alpha * (n + 1) + (depth - alpha) * (m + 1)) / (depth * (n + 1))


# ------------------------------------------------------------------ chapter 06 wrong answers
def _flops_hooked(model, shape, *, groups=True, macs=False, input_size=False):
    import math as _m
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            b, c_out, h, w = out.shape
            if input_size:
                h, w = inp[0].shape[-2:]
            c_in = m.in_channels // (m.groups if groups else 1)
            total += (1 if macs else 2) * b * c_out * h * w * c_in * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += (1 if macs else 2) * _m.prod(inp[0].shape[:-1]) * m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(shape))
    for h in hs:
        h.remove()
    return total


def _flops_with_counter(model, shape):            # the counter itself: off limits
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as c:
        model(torch.zeros(shape))
    return c.get_total_flops()


def _pareto_strict(cost, quality):                 # dominance only when better on both axes
    keep = [i for i, (c, q) in enumerate(zip(cost, quality))
            if not any(c2 < c and q2 > q for c2, q2 in zip(cost, quality))]
    return sorted(keep, key=lambda i: (cost[i], -quality[i]))


def _pareto_dedup(cost, quality):                  # drops the second of two identical points
    keep = []
    for i, (c, q) in enumerate(zip(cost, quality)):
        if (c, q) in [(cost[j], quality[j]) for j in keep]:
            continue
        if not any(c2 <= c and q2 >= q and (c2 < c or q2 > q) for c2, q2 in zip(cost, quality)):
            keep.append(i)
    return sorted(keep, key=lambda i: (cost[i], -quality[i]))


def _verdict_population_sd(a, b):                  # pstdev: n instead of n - 1
    import statistics as st
    d = st.fmean(a) - st.fmean(b)
    s = math.sqrt((st.pvariance(a) + st.pvariance(b)) / 2)
    return ("a" if d > 0 else "b") if abs(d) > 2 * s else "tie"


def _verdict_one_sd(a, b):                         # |d| > s instead of 2 s
    import statistics as st
    d = st.fmean(a) - st.fmean(b)
    s = math.sqrt((st.variance(a) + st.variance(b)) / 2)
    return ("a" if d > 0 else "b") if abs(d) > s else "tie"


WRONG = [
    ("capstone.conv_flops", lambda m, s: _flops_hooked(m, s, groups=False), "groups"),
    ("capstone.conv_flops", lambda m, s: _flops_hooked(m, s, macs=True), "every Conv2d: 2 x"),
    ("capstone.conv_flops", lambda m, s: _flops_hooked(m, s, input_size=True), "H_out"),
    ("capstone.conv_flops", _flops_with_counter, "forbids `torch.utils.flop_counter.FlopCounterMode"),
    ("capstone.pareto", _pareto_strict, "equal cost and lower quality is dominated"),
    ("capstone.pareto", _pareto_dedup, "two identical points"),
    ("capstone.verdict", _verdict_population_sd, "sample"),
    ("capstone.verdict", _verdict_one_sd, "smaller than 2 s"),
    ("capstone.equal_time", lambda n, a, b: int(n * a / b), "nearest"),
    ("expedite.locality", _loc_round, "integer floor division"),
    ("expedite.em_step", _em_naive_exp, "exp of a large number"),
    ("expedite.em_step", _em_no_clamp, "a centre no token may join"),
    ("expedite.topk_weights", _tk_unstabilised, "distances that underflow"),
    ("expedite.topk_weights", _tk_exactly_k, "ties kept"),
    ("expedite.assign_kernel", (em_assign_launcher(em_assign_kernel_on_grid_only), em_assign_kernel_on_grid_only),
     "store 0 for slots off the grid"),
    ("expedite.macs_fraction", _mf_no_cls, "CLS token"),
    ("expedite.macs_fraction", _mf_no_attention, "do not drop it"),
    ("rtformer.double_norm", _dn_over_slots, "softmax over the N positions"),
    ("rtformer.double_norm", _dn_no_eps, "group sum + eps"),
    ("rtformer.double_norm", _dn_ignores_groups, "M/G consecutive slots"),
    ("rtformer.cross_kv", _kv_avg_pool, "*max*"),
    ("rtformer.cross_kv", _kv_swapped, "first C_h output channels are K_c"),
    ("rtformer.mhea_as_gfa", _mh_dense, "group h of GFA = head h"),
    ("rtformer.mhea_as_gfa", _mh_contiguous, "interleaved"),
    ("rtformer.cross_kv", _kv_adaptive, "forbids"),
    ("rtformer.column_lse_kernel", (column_lse_launcher, column_lse_kernel_no_max), "exp of a large number"),
    ("rtformer.distinct_keys", _keys_min, "not min(n, s)"),
    ("hrvit.kron_fold", _kron_no_transpose, "A X B^T"),
    ("hrvit.kron_fold", _kron_no_batch, "batched tokens: your code raised RuntimeError"),
    ("hrvit.kron_fold", _kron_einsum_materialised, "it was formed"),
    ("hrvit.des", _des_relu, "use GELU"),
    ("hrvit.des", _des_no_act, "activation GELU"),
    ("hrvit.stripes", _stripes_row_major_vertical, "column-major"),
    ("hrvit.fusion", _fuse_relu, "not HRNet's ReLU"),
    ("hrvit.des_kernel", (right_launcher, right_kernel_no_bias), "max abs error"),
    ("hrvit.padding_waste", _waste_horizontal_only, "count both orientations"),
    ("hiremlp.partition", _part_no_shift, "the shift is +s"),
    ("hiremlp.partition", _part_contiguous, "storage offset you are given"),
    ("hiremlp.restore", _restore_no_crop, "shape"),
    ("hiremlp.reach", _reach_ignores_shift, "walk back from the output"),
    ("hiremlp.reach", _reach_keeps_padded_copies, "padded copies are dropped"),
    ("hiremlp.restore_conv", _rc_rows_forward_direction, "(r + s) mod H"),
    ("hiremlp.restore_conv", _rc_conv2d_layout, "(in, out, kH, kW)"),
    ("hiremlp.restore_conv", _rc_no_crop, "cropped back to its size"),
    ("hiremlp.scatter_kernel", (scatter_launcher(scatter_kernel_first_copy), scatter_kernel_first_copy),
     "appears in the padded map"),
    ("hiremlp.scatter_kernel", (scatter_launcher(scatter_kernel_atomic), scatter_kernel_atomic), "without atomics"),
    ("hiremlp.scatter_kernel", (scatter_launcher(scatter_kernel_fp16_acc), scatter_kernel_fp16_acc),
     "2048 + 1 is 2048"),
    ("transnext.key_counts", _counts_no_mask, "on the map"),
    ("transnext.key_counts", _counts_shifted, "masked, not shifted inward"),
    ("transnext.lsca", _lsca_scaled_bias, "add B after the tau ln N scaling"),
    ("transnext.lsca", _lsca_no_normalise, "normalise q and k to unit length"),
    ("transnext.pool", _pool_before_gelu, "GELU(mean) is not mean(GELU)"),
    ("transnext.convglu", _glu_conv_on_value, "belongs to the gate branch"),
    ("transnext.window_logits_kernel", (window_logits_launcher, window_logits_kernel_clamped), "never a clamped"),
    ("transnext.multipliers", _mult_fixed_pool, "P grows with the image"),
    ("hrvit.padding_waste", _waste_padded_tokens, "expected"),
    ("preface.miou", lambda p, t, k, i=255: torch.zeros(()), "got 0.0000"),
    ("preface.miou", _miou_pixel_acc, "pixel accuracy"),
    ("preface.miou", _miou_no_ignore, "ignore index must be dropped"),
    ("preface.miou", _miou_absent_as_zero, "leave it out of the mean"),
    ("preface.lr_schedule", _lr_off_by_one, "(step + 1) / warmup_steps"),
    ("preface.lr_schedule", _lr_no_floor, "min_lr_ratio"),
    ("preface.digit_boxes", _boxes_inclusive, "exclusive"),
    ("preface.digit_boxes", _boxes_with_background, "have no box"),
    ("preface.softmax_grad", _sgrad_missing_term, "eq. (S2)"),
    ("preface.softmax_grad", _sgrad_last_axis, "reduce over `dim`"),
    ("preface.softmax_grad", lambda y, dy, dim=-1: torch.zeros_like(y), "max abs error"),
    ("preface.l2norm_kernel", (l2_launcher(l2_kernel_no_eps), l2_kernel_no_eps), "NaN"),
    ("preface.l2norm_kernel", (l2_launcher(l2_kernel_ok, torch.float32), l2_kernel_ok), "dtype float16"),
    ("preface.l2norm_kernel", (l2_launcher(l2_kernel_l1), l2_kernel_l1), "max abs error"),
]


@pytest.mark.parametrize("qid, fn, message", WRONG, ids=[f"{q}-{i}" for i, (q, _, _) in enumerate(WRONG)])
def test_plausible_wrong_answers_lose_points_with_the_right_message(qid, fn, message):
    fn, kernel = fn if isinstance(fn, tuple) else (fn, None)
    r = grade_function(qid, fn, kernel=kernel, seed=1)
    assert r.points < r.max_points
    assert any(message in m for m in r.messages), r.messages
    assert len(r.messages) <= 3
    assert grade_function(qid, fn, kernel=kernel, seed=1).messages == r.messages    # deterministic


def test_every_question_has_a_wrong_answer_fixture():
    assert {q.id for q in questions()} <= {qid for qid, _, _ in WRONG}


# ------------------------------------------------------------------ never raises
def _question(fn_check, limit=20.0):
    return Question("test.q", "t", "f", (Check("only", 2, fn_check),), time_limit=limit)


def test_timeouts_exceptions_types_nans_and_warnings_become_messages():
    def loops(fn):
        fn()

    def forever():
        while True:
            pass

    t0 = time.perf_counter()
    r = run_question(_question(loops, limit=0.5), forever)
    assert r.points == 0 and "timed out after 0.5 s" in r.messages[0]
    assert time.perf_counter() - t0 < 5

    r = run_question(_question(loops), lambda: 1 / 0)
    assert r.messages == ["only: your code raised ZeroDivisionError: division by zero"]

    r = grade_function("preface.miou", lambda *a: "0.5")
    assert "expected the mean IoU to be a number, got str" in r.messages[0]

    r = grade_function("preface.softmax_grad", lambda y, dy, dim=-1: y / 0 * dy)
    assert any("NaN/inf" in m for m in r.messages)

    def warns(fn):
        fn()

    def noisy():
        warnings.warn("careful")
    r = run_question(_question(warns), noisy)
    assert r.points == 2 and "warned UserWarning: careful" in r.messages[0]

    r = run_question(_question(loops), lambda: recurse())          # noqa: F821
    assert r.points == 0
    assert grade_function("preface.miou", None).messages[0].startswith("define a function named `mean_iou`")
    assert "should be a function" in grade_function("preface.miou", 3).messages[0]


def recurse():
    return recurse()


def test_partial_credit():
    def half_right(pred, target, k, ignore=255):      # ignores the ignore index only
        return _miou_no_ignore(pred, target, k, ignore)
    r = grade_function("preface.miou", half_right)
    assert 0 < r.points < r.max_points


def test_check_prints_one_line_and_hints(capsys):
    def mean_iou(pred, target, k, ignore=255):
        raise NotImplementedError
    check("preface.miou", mean_iou)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "preface.miou: 0/4" and out[1].startswith("  - not attempted yet (0/4)")
    with pytest.raises(KeyError, match="preface.miou"):
        get_question("preface.nope")


# ------------------------------------------------------------------ authoring
def test_strip_solutions():
    src = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
    assert strip_solutions(src) == ("def f(x):\n    y = 1\n    raise NotImplementedError("
                                    "\"exercise: write your solution here\")\n")
    for bad in ("### BEGIN SOLUTION\n", "### END SOLUTION\n",
                "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n"):
        with pytest.raises(ValueError):
            strip_solutions(bad)


def test_committed_student_notebooks_are_generated():
    r = subprocess.run([sys.executable, "-m", "hrvit_edu.grading.assign", "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout
    assert pairs() and all(s.exists() for _, s in pairs())


def test_generated_students_have_no_solution_code():
    import nbformat
    for master, _ in pairs():
        student = make_student(nbformat.read(master, as_version=4))
        text = "\n".join(c.source for c in student.cells)
        assert "BEGIN SOLUTION" not in text and "NotImplementedError" in text
        assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")


def test_cli_exit_codes(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hrvit_edu.grading", str(tmp_path / "missing.ipynb")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such notebook" in r.stderr


def test_an_infinite_reference_accepts_only_that_value():
    from hrvit_edu.grading.compare import assert_matches
    from hrvit_edu.grading.core import CheckFailed
    want = torch.tensor([1.0, float("-inf")])
    assert_matches(torch.tensor([1.0, float("-inf")]), want)
    with pytest.raises(CheckFailed, match="where the answer is -inf"):
        assert_matches(torch.tensor([1.0, -1e9]), want)
