"""The book's claim table: every claim chapters 01-05 re-tested, recomputed from their stored results.

Each :class:`Claim` names the chapter, the claim, what the paper (or its official code) says, and
the two arms of the chapter's stored sweep whose difference tests it.  :func:`claim_table` reads
``chapters/results/`` and applies the verdict rule the chapters stated before their numbers:

* chapters 01-04 (independent seeds): d = mean(reference) - mean(arm), pooled sd
  s = sqrt((s_a^2 + s_r^2) / 2); resolved when |d| > 2 s (:func:`~hrvit_edu.train.ablation.compare`);
* chapter 05 (one trained model per seed, arms evaluated on it): d_i per seed, paired;
  resolved when |mean d| > 2 sd(d).

``helps`` claims (the paper's design beats the arm) read: confirmed (resolved, d > 0),
contradicted (resolved, d < 0), else not resolved at this scale.  ``no_loss`` claims (the cheaper
design loses nothing, or at most ``tol``, against the arm) are contradicted only when the arm is
resolved better by more than ``tol`` (chapter 05's claim allows half a point: the paper concedes
a quarter of one).  Chapter 01's verdict column also flagged seeds that collapsed to the
all-background solution; this table does not carry that flag (see chapter 01).
Rows whose ``paper`` is "-" test a choice the book made (an adaptation, or the official code
against the paper's text): "ours better" / "ours worse" / not resolved.

The paper's numbers are the only typed values; the chapters cite where each comes from.  Counted
claims (published parameter counts reproduced) are computed by :func:`count_claims`.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

from .train.ablation import compare, load_results


@dataclasses.dataclass(frozen=True)
class Claim:
    chapter: str
    text: str
    paper: str
    arm: str                          # the alternative the claim is tested against
    ref: str = "reference"            # the paper's (or the book's) design
    metric: str = "test_miou"
    kind: str = "helps"               # "helps" | "no_loss"
    tol: float = 0.0                  # no_loss: a loss up to tol (mIoU, a fraction) is allowed by the claim


CLAIMS: tuple[Claim, ...] = (
    Claim("01_hrvit", "DES loses no accuracy vs a dense shortcut", "no loss", "dense DES", kind="no_loss"),
    Claim("01_hrvit", "shared K/V loses no accuracy", "no loss", "separate K/V", kind="no_loss"),
    Claim("01_hrvit", "the HR branch helps boundaries", "better detail", "head skips the finest branch",
          metric="boundary_acc"),
    Claim("01_hrvit", "stride-2 stem (adaptation)", "-", "stem to stride 4"),
    Claim("01_hrvit", "code's zero BN init vs the paper's identity", "-", "identity attention BN (paper)"),
    Claim("01_hrvit", "code's GELU in DES vs the paper's Hardswish", "-", "Hardswish in DES (paper)"),
    Claim("01_hrvit", "windows of 4 on coarse branches (adaptation)", "-", "windows 7 on coarse branches"),
    Claim("02_transnext", "ConvGLU beats ConvFFN", "better (unverified)", "ConvFFN (not ConvGLU)"),
    *(Claim("02_transnext", f"LSCA + log-CPB beats softmax + table at {f:g}x", "better multi-scale (unverified)",
            "softmax + bias table", metric=f"test_miou_x{f:g}") for f in (0.75, 1.5, 2.0)),
    Claim("03_rtformer", "double norm beats a single softmax", "better (Table 5a, unverified)",
          "single softmax over M (book's comparator)"),
    Claim("03_rtformer", "groups (G = 8) beat G = 1", "better (Table 5c, unverified)",
          "double norm without groups (G = 1)"),
    Claim("03_rtformer", "GFA beats multi-head external attention", "better (Table 5a, unverified)",
          "multi-head EA (8 heads)"),
    Claim("03_rtformer", "control: the low-branch attention helps", "-", "no low-branch attention (control)"),
    Claim("03_rtformer", "code's 1/s scale vs 1/sqrt(C_h)", "-", "CA scale 1/sqrt(C_h) (paper?)"),
    Claim("03_rtformer", "PyTorch BN momentum vs Paddle's", "-", "BN momentum as Paddle's 0.1 (torch 0.9)"),
    Claim("03_rtformer", "stride-2 stem vs the official 4", "-", "stem to stride 4"),
    Claim("04_hiremlp", "cross-region shift helps", "helps (unverified)", "no cross-region shift (s = 0)"),
    Claim("04_hiremlp", "code's re-weighting vs the paper's sum", "-", "sum of branches (paper)"),
    Claim("04_hiremlp", "stride-2 stem (adaptation)", "-", "stem to stride 4"),
    Claim("04_hiremlp", "PyTorch init vs trunc-normal 0.02 (adaptation)", "-", "official init (trunc-normal 0.02)"),
    Claim("04_hiremlp", "four blocks in stage 3 (adaptation)", "-", "two blocks per stage (first edition)"),
    Claim("05_expedite", "expediting at the paper's placement loses a fraction of a point",
          "-0.26 points at -32.6% GFLOPs (ADE20K)", "original", ref="expedited", kind="no_loss", tol=0.005),
    Claim("05_expedite", "clustering beats average pooling", "better (unverified)", "pooling + bilinear",
          ref="expedited"),
    Claim("05_expedite", "top-k reconstruction beats bilinear upsampling", "better (unverified)",
          "clustering + bilinear", ref="expedited"),
    Claim("05_expedite", "top-k reconstruction beats naive unpooling", "better (unverified)",
          "clustering + naive unpooling", ref="expedited"),
    Claim("05_expedite", "L2 (code) vs L1 (paper) reconstruction weights", "-", "L1 weights (paper)",
          ref="expedited"),
    Claim("05_expedite", "t chosen for the model vs the official 0.02", "-", "t = 0.02 (official)", ref="expedited"),
)


def results_file(results_dir: str | Path, chapter: str, profile: str) -> Path:
    kind = "seeds" if chapter == "05_expedite" else "ablations"
    return Path(results_dir) / f"{chapter}_{kind}_{profile}.json"


@dataclasses.dataclass(frozen=True)
class Verdict:
    claim: Claim
    d: float                 # mean difference ref - arm (mIoU or boundary accuracy, as a fraction)
    s: float                 # the sd the rule compares against (pooled, or of the paired differences)
    n: int                   # seeds per arm
    verdict: str
    source: str              # the stored results file


def _verdict(c: Claim, d: float, s: float) -> str:
    resolved = abs(d) > 2 * s
    if c.kind == "no_loss":                # contradicted: a resolved loss larger than the claim allows
        return "contradicted" if resolved and d < -c.tol else "not contradicted"
    if c.paper == "-":
        return ("ours better" if d > 0 else "ours worse") if resolved else "not resolved at this scale"
    return ("confirmed" if d > 0 else "contradicted") if resolved else "not resolved at this scale"


def evaluate_claim(c: Claim, results: dict, source: str) -> Verdict:
    """One claim against one chapter's stored runs (see the module docstring for the rule)."""
    by = {}
    for r in results["runs"]:
        if c.metric in r:
            by.setdefault(r["arm"], {})[r["seed"]] = r[c.metric]
    for arm in (c.ref, c.arm):
        if arm not in by:
            raise KeyError(f"{source}: no stored runs of arm {arm!r} with metric {c.metric!r} (claim {c.text!r})")
    ref, alt = by[c.ref], by[c.arm]
    if c.chapter == "05_expedite":                     # paired by seed: both arms ran on the same trained model
        seeds = sorted(set(ref) & set(alt))
        ds = [ref[s_] - alt[s_] for s_ in seeds]
        d, s, n = statistics.fmean(ds), statistics.stdev(ds) if len(ds) > 1 else math.nan, len(ds)
    else:
        summ = [(statistics.fmean(v.values()), statistics.stdev(v.values()), len(v)) for v in (ref, alt)]
        d, s, _ = compare(*summ)
        n = min(summ[0][2], summ[1][2])
    return Verdict(c, d, s, n, _verdict(c, d, s), source)


def claim_table(results_dir: str | Path, profile: str = "book", claims=CLAIMS) -> list[Verdict]:
    """Every claim whose chapter has a stored results file, in chapter order; a claim whose arms the
    file lacks raises (the registry and the chapter disagree)."""
    cache: dict[Path, dict] = {}
    rows = []
    for c in claims:
        path = results_file(results_dir, c.chapter, profile)
        if not path.exists():
            continue
        if path not in cache:
            cache[path] = load_results(path)
        rows.append(evaluate_claim(c, cache[path], path.name))
    return rows


# ----------------------------------------------------------------------------------- counted claims
# (chapter, registered model prefix, create_model kwargs, reference table, what is counted, where the
# reference numbers come from -- see each model module's comment above its table)
COUNTED = (
    ("01_hrvit", "hrvit", dict(num_classes=0, in_chans=3), "hrvit:OFFICIAL_BACKBONE_PARAMS", "backbone",
     "official code, counted"),
    ("02_transnext", "transnext", dict(num_classes=1000, in_chans=3, task="classify"),
     "transnext:PUBLISHED_PARAMS", "ImageNet classifier", "official README"),
    ("03_rtformer", "rtformer", dict(num_classes=19, in_chans=3), "rtformer:PUBLISHED_PARAMS", "Cityscapes segmenter",
     "spec's count (paper: ~4.8/16.8 M, unverified)"),
    ("04_hiremlp", "hire_mlp", dict(num_classes=1000, in_chans=3, task="classify"), "hire_mlp:PUBLISHED_PARAMS",
     "ImageNet classifier", "paper / README"),
)


def count_claims() -> list[dict]:
    """'The published variants' parameter counts are reproduced': every variant built, counted, and
    compared with the table its model module cites (a few seconds: the largest has ~96 M parameters)."""
    import importlib

    import hrvit_edu

    from .bench import count_params

    rows = []
    for chapter, prefix, kwargs, table, what, reference in COUNTED:
        module, attr = table.split(":")
        published = getattr(importlib.import_module(f"hrvit_edu.models.{module}"), attr)
        for variant, paper in published.items():
            ours = count_params(hrvit_edu.create_model(f"{prefix}_{variant}", **kwargs))
            rows.append({"chapter": chapter, "model": f"{prefix}_{variant}", "what": what, "reference": reference,
                         "published": paper,
                         "ours": ours, "rel_error": ours / paper - 1})
    return rows
