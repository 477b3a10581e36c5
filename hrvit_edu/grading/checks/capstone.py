"""Questions of ``exercises/06_capstone.ipynb``: FLOPs of a network counted by hand (and matched to
the counter), the Pareto front, the verdict rule behind every leaderboard comparison, and a
fair-comparison question (equal steps vs equal time) answered from the stored study."""
from __future__ import annotations

import json
import math
import statistics

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..core import Check, CheckFailed, Question, hidden_rng, register

_OWN = "hrvit_edu.grading.checks.capstone"
# Counting FLOPs with the counter itself, or calling the package's answers, is off limits.
# (torch's profiler counts FLOPs too: it is off limits with the counter)
_COUNTERS = ("torch.utils.flop_counter", "torch.utils.flop_counter.FlopCounterMode", "torch.profiler.profile",
             "torch.autograd.profiler.profile", "hrvit_edu.bench.core.count_flops", _OWN)
_CAPSTONE = ("hrvit_edu.capstone", "hrvit_edu.claims", "hrvit_edu.report", "hrvit_edu.train.ablation.compare", _OWN)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ references
def counted_flops(model: nn.Module, shape) -> int:
    """What ``torch.utils.flop_counter`` counts for one forward pass (the answer must match it)."""
    x = torch.randn(*shape, generator=_gen(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops()


def pareto_reference(cost, quality):
    keep = [i for i, (c, q) in enumerate(zip(cost, quality))
            if not any(c2 <= c and q2 >= q and (c2 < c or q2 > q) for c2, q2 in zip(cost, quality))]
    return sorted(keep, key=lambda i: (cost[i], -quality[i]))


def verdict_reference(a, b):
    d = statistics.fmean(a) - statistics.fmean(b)
    s = math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)
    return ("a" if d > 0 else "b") if abs(d) > 2 * s else "tie"


def equal_time_reference(steps, seconds_ref, seconds_model):
    return max(1, round(steps * seconds_ref / seconds_model))


# ------------------------------------------------------------------------------ 1. FLOPs by hand
class _Tokens(nn.Module):
    """conv stem -> tokens (B, N, C) -> a linear layer on every token -> back to a map."""

    def __init__(self, c_in, c, c_out):
        super().__init__()
        self.stem = nn.Conv2d(c_in, c, 3, stride=2, padding=1)
        self.mix = nn.Linear(c, 2 * c)
        self.out = nn.Linear(2 * c, c_out, bias=False)

    def forward(self, x):
        y = self.stem(x)
        b, c, h, w = y.shape
        t = self.out(torch.relu(self.mix(y.flatten(2).transpose(1, 2))))
        return t.transpose(1, 2).reshape(b, -1, h, w)


def _net(rng, c_in, size):
    """2-4 convolutions with drawn kernel, stride, padding, dilation, groups and bias, each one fitting
    the map it receives."""
    layers, c, h = [], c_in, size
    for _ in range(rng.randint(2, 4)):
        g = rng.choice((1, 1, 2))
        g = g if c % g == 0 else 1
        c_out = g * rng.randint(2, 6)
        k, d = rng.choice((1, 3, 5)), rng.choice((1, 1, 2))
        p = rng.randint(0, k // 2 * d)
        if h + 2 * p < d * (k - 1) + 1:
            k, d, p = 1, 1, 0
        s = rng.choice((1, 2))
        layers += [nn.Conv2d(c, c_out, k, stride=s, padding=p, dilation=d, groups=g, bias=rng.random() < 0.5),
                   nn.ReLU()]
        c, h = c_out, (h + 2 * p - d * (k - 1) - 1) // s + 1
    return nn.Sequential(*layers)


def _flops_check(fn, model, shape, hint):
    want = counted_flops(model, shape)
    got = fn(model, shape)
    if isinstance(got, torch.Tensor):
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)) or got != want:
        raise CheckFailed(f"{hint} input {tuple(shape)}: got {got!r}, the counter says {want} "
                          f"({type(model).__name__}).")


def _flops_hidden(fn):
    rng = hidden_rng(80)
    for _ in range(3):
        torch.manual_seed(rng.randint(0, 10_000))
        c_in, size = rng.randint(1, 4), rng.randint(9, 31)
        _flops_check(fn, _net(rng, c_in, size), (rng.randint(1, 3), c_in, size, size + rng.randint(0, 7)), "")


def _preface(fn):
    import hrvit_edu
    torch.manual_seed(0)
    _flops_check(fn, hrvit_edu.create_model("preface_convnet"), (2, 1, 64, 64),
                 "every Conv2d: 2 x B x C_out x H_out x W_out x (C_in / groups) x k_h x k_w; the bias and the "
                 "norms are not counted. Read H_out, W_out from a forward hook.")


register(Question("capstone.conv_flops", "FLOPs of a network by hand, matched to the counter, (6.1)",
                  "count_flops_by_hand", (
    Check("the Preface ConvNet at 64 x 64", 1, _preface),
    Check("strides, padding, dilation, groups", 1, lambda fn: _flops_check(
        fn, nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2), nn.ReLU(),
                          nn.Conv2d(8, 6, (1, 5), padding=(0, 2), bias=False)), (3, 4, 21, 17),
        "H_out = floor((H + 2 p - d (k - 1) - 1) / s) + 1; a grouped conv reads C_in / groups channels;")),
    Check("linear layers on tokens", 1, lambda fn: _flops_check(
        fn, _Tokens(2, 12, 5), (2, 2, 18, 14),
        "a Linear on (B, N, C_in) costs 2 x B x N x C_in x C_out (every leading dimension counts);")),
    Check("hidden networks", 1, _flops_hidden),
), off_limits=_COUNTERS))


# ------------------------------------------------------------------------------ 2. Pareto front
def _pareto_check(fn, cost, quality, hint):
    want = pareto_reference(cost, quality)
    got = fn(list(cost), list(quality))
    try:
        got = [int(i) for i in got]
    except (TypeError, ValueError):
        raise CheckFailed(f"return a list of indices, got {got!r}") from None
    if got != want:
        raise CheckFailed(f"{hint} cost {list(cost)}, quality {list(quality)}: got {got}, expected {want}.")


def _pareto_hidden(fn):
    rng = hidden_rng(81)
    for _ in range(4):
        n = rng.randint(1, 12)
        _pareto_check(fn, [rng.randint(1, 8) for _ in range(n)], [rng.randint(0, 6) / 6 for _ in range(n)], "")


register(Question("capstone.pareto", "the Pareto front of cost vs quality, (6.3)", "pareto_front", (
    Check("five models", 1, lambda fn: _pareto_check(
        fn, [3.0, 1.0, 4.0, 2.0, 5.0], [0.70, 0.60, 0.65, 0.80, 0.85],
        "keep a point unless another is no worse on both axes and better on one; sort by cost.")),
    Check("ties on one axis and on both", 1, lambda fn: _pareto_check(
        fn, [1.0, 1.0, 2.0, 2.0, 3.0], [0.5, 0.7, 0.7, 0.9, 0.9],
        "equal cost and lower quality is dominated; equal quality at a higher cost is dominated;")),
    Check("identical points", 1, lambda fn: _pareto_check(
        fn, [2.0, 2.0, 1.0], [0.5, 0.5, 0.1],
        "two identical points do not dominate each other: keep both (in index order);")),
    Check("hidden sets", 1, _pareto_hidden),
), off_limits=_CAPSTONE))


# ------------------------------------------------------------------------------ 3. the verdict rule
def _verdict_check(fn, a, b, hint):
    want = verdict_reference(a, b)
    got = fn(list(a), list(b))
    if got != want:
        d = statistics.fmean(a) - statistics.fmean(b)
        s = math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)
        raise CheckFailed(f"{hint} a = {list(a)}, b = {list(b)}: got {got!r}, expected {want!r} "
                          f"(d = {d:+.4f}, 2 s = {2 * s:.4f}).")


def _verdict_hidden(fn):
    rng = hidden_rng(82)
    for _ in range(5):
        n = rng.randint(2, 5)
        mu = rng.uniform(0.5, 0.8)
        sa, sb = rng.uniform(0.001, 0.03), rng.uniform(0.001, 0.03)
        gap = rng.choice((0.0, 0.01, 0.05, -0.05))
        _verdict_check(fn, [rng.gauss(mu + gap, sa) for _ in range(n)], [rng.gauss(mu, sb) for _ in range(n)], "")


register(Question("capstone.verdict", "the book's verdict rule (6.2): resolved when |d| > 2 s", "verdict", (
    Check("a clear winner", 1, lambda fn: _verdict_check(
        fn, [0.80, 0.81, 0.79], [0.70, 0.72, 0.71],
        "d = mean(a) - mean(b); s = sqrt((s_a^2 + s_b^2) / 2) with *sample* sds (n - 1);")),
    Check("a gap inside the noise", 1, lambda fn: _verdict_check(
        fn, [0.80, 0.76, 0.78], [0.76, 0.75, 0.74],
        "a difference smaller than 2 s is a 'tie', whatever its sign (s from *sample* sds, n - 1);")),
    Check("b better, two seeds", 1, lambda fn: _verdict_check(
        fn, [0.60, 0.62], [0.70, 0.71], "return 'b' when b's mean is resolved higher;")),
    Check("hidden seeds", 1, _verdict_hidden),
), off_limits=_CAPSTONE))


# ------------------------------------------------------------------------------ 4. fair comparison
def _study():
    from ...capstone import results_path
    from ..assign import find_root
    return json.loads(results_path(find_root(), "book").read_text())


def _et_check(fn, row, hint):
    study = _study()
    runs = {r["row"]: r for r in study["runs"] if r["seed"] == 0}
    steps = study["budget"]["steps"]
    ref = runs["ConvNet (Preface)"]["train_seconds"]
    want = equal_time_reference(steps, ref, runs[row]["train_seconds"])
    got = fn(steps, ref, runs[row]["train_seconds"])
    if isinstance(got, bool) or not isinstance(got, int) or got != want:
        raise CheckFailed(f"{hint} {row}: got {got!r}, expected {want} steps.")


def _et_hidden(fn):
    rng = hidden_rng(83)
    for _ in range(4):
        steps, a, b = rng.randint(10, 5000), rng.uniform(1, 500), rng.uniform(1, 500)
        want = equal_time_reference(steps, a, b)
        got = fn(steps, a, b)
        if got != want:
            raise CheckFailed(f"steps {steps}, reference {a:.1f} s, model {b:.1f} s: got {got!r}, expected {want}.")


register(Question("capstone.equal_time", "what happens if the budget is wall-clock, not steps",
                  "equal_time_steps", (
    Check("HRViT in the ConvNet's time (the stored study)", 1, lambda fn: _et_check(
        fn, "HRViT", "a model whose steps are slower runs proportionally fewer of them in the reference's time "
        "(rounded to the nearest int, at least 1);")),
    Check("the ViT in the ConvNet's time", 1, lambda fn: _et_check(
        fn, "ViT", "round to the nearest step (round(), not int(), which truncates);")),
    Check("hidden budgets", 1, _et_hidden),
), off_limits=_CAPSTONE))
