"""Single-change ablations with several seeds, stored as a results file a chapter can load.

An *arm* is a name and the config overrides that make it differ from the reference model (one
change per arm).  :func:`run_ablation` trains every arm with every seed on the same data and
budget and records, per run: test mIoU, boundary accuracy, training seconds, and the run key
(:func:`~.cache.run_key`: model structure, initial weights, budget, data, package version).
A chapter whose full sweep is too long for its default profile loads the stored file, checks
that every stored key is the key the current code gives, and re-runs one run live to confirm the
stored number.

Verdict rule used by the book (stated before any number is looked at): with arm means m_a, m_r
and sample standard deviations s_a, s_r over n seeds each, the pooled sd is
s = sqrt((s_a^2 + s_r^2) / 2); a difference d = m_a - m_r is *resolved* when |d| > 2 s.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Callable

import torch.nn as nn

from .._io import atomic_write, read_or_explain
from ..data.datasets import DataBundle
from .budget import Budget
from .cache import run_key
from .evaluate import boundary_accuracy
from .loop import fit


def ablation_budget(budget: Budget) -> Budget:
    """Half a profile's main budget, final evaluation only: the book's ablation budget, long enough
    that a chapter's reference model has clearly learned (each chapter states its mIoU), short
    enough for every arm x 3 seeds."""
    return budget.replace(steps=budget.steps // 2, warmup_steps=budget.warmup_steps // 2, eval_every=0)


def sweep_groups(ablations: dict, seeds, lr_values=()) -> list[tuple[list["Arm"], list[int]]]:
    """A chapter's sweep as (arms, seeds) groups: every arm of ``ablations`` (name -> overrides)
    with each of ``seeds``, then, if given, one arm per learning rate of ``lr_values`` with seed 0."""
    groups = [([Arm(name, kw) for name, kw in ablations.items()], list(seeds))]
    if lr_values:
        groups.append(([Arm(f"lr {lr:g}", {}, {"lr": lr}) for lr in lr_values], [0]))
    return groups


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: model config ``overrides`` and, for optimiser arms, ``budget`` overrides."""

    name: str
    overrides: dict
    budget: dict = dataclasses.field(default_factory=dict)


def _record(arm: Arm, seed: int, model: nn.Module, data: DataBundle, budget: Budget, key: str, history) -> dict:
    return {"arm": arm.name, "overrides": arm.overrides, "budget": arm.budget, "seed": seed, "key": key,
            "test_miou": history.test_miou, "boundary_acc": boundary_accuracy(model, data.test),
            "train_seconds": history.train_seconds}


def run_ablation(make_model: Callable[..., nn.Module], arms: list[Arm], seeds: list[int], data: DataBundle,
                 budget: Budget, *, path: str | Path | None = None, env: dict | None = None,
                 progress: bool | None = False, extra: Callable[[nn.Module], dict] | None = None) -> dict:
    """Train every (arm, seed); return ``{"budget", "env", "runs"}``.

    ``extra(model) -> {metric: value}`` adds a chapter's own measurements of each trained model to
    its record (e.g. chapter 02's mIoU at other test resolutions); :func:`summarize` reads them.

    ``make_model(**overrides)`` builds a fresh model; the seed is set before it is built and the
    budget's seed is the run's seed.  With ``path``, the results are written after every run and
    runs already stored under the same key are not repeated (an interrupted sweep resumes), and
    stored runs of other arms are kept.
    """
    import torch

    runs: dict[str, dict] = {}
    if path is not None and Path(path).exists():
        runs = {r["key"]: r for r in load_results(path)["runs"]}
    out = {"budget": dataclasses.asdict(budget), "env": env or {}, "runs": list(runs.values())}
    for arm in arms:
        for seed in seeds:
            torch.manual_seed(seed)
            model = make_model(**arm.overrides)
            b = budget.replace(seed=seed, **arm.budget)
            key = run_key(model, data, b)
            if key in runs:
                continue
            history = fit(model, data, b, progress=progress)
            runs[key] = _record(arm, seed, model, data, b, key, history)
            if extra is not None:
                runs[key].update(extra(model))
            out["runs"] = list(runs.values())
            if path is not None:
                save_results(out, path)
    return out


def save_results(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, sort_keys=True)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def load_results(path: str | Path) -> dict:
    return read_or_explain(Path(path), lambda p: json.loads(Path(p).read_text()), "ablation results")


def expected_keys(make_model: Callable[..., nn.Module], arms: list[Arm], seeds: list[int], data: DataBundle,
                  budget: Budget) -> dict[tuple[str, int], str]:
    """The run key every (arm, seed) gets from the current code (builds the models, trains nothing)."""
    import torch

    keys = {}
    for arm in arms:
        for seed in seeds:
            torch.manual_seed(seed)
            keys[arm.name, seed] = run_key(make_model(**arm.overrides), data,
                                           budget.replace(seed=seed, **arm.budget))
    return keys


def check_results(results: dict, keys: dict[tuple[str, int], str], *, field: str = "arm",
                  what: str = "ablation results",
                  fix: str = "re-run the sweep (see the chapter's instructions)") -> None:
    """Raise unless ``results`` holds exactly one run per expected (``field``, seed), with the key
    the current code gives it (a stale file from older code or another budget is refused)."""
    stored = {(r[field], r["seed"]): r["key"] for r in results["runs"]}
    missing = sorted(set(keys) - set(stored))
    stale = sorted(k for k in keys if k in stored and stored[k] != keys[k])
    if missing or stale:
        raise ValueError(f"stored {what} do not match the current code: missing {missing}, "
                         f"stale {stale}; {fix}")


def summarize(results: dict, metric: str = "test_miou") -> dict[str, tuple[float, float, int]]:
    """Per arm: (mean, sample sd, n) of ``metric`` over seeds."""
    by_arm: dict[str, list[float]] = {}
    for r in results["runs"]:
        by_arm.setdefault(r["arm"], []).append(r[metric])
    return {a: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else float("nan"), len(v))
            for a, v in by_arm.items()}


def compare(arm: tuple[float, float, int], ref: tuple[float, float, int]) -> tuple[float, float, bool]:
    """(d, pooled sd, resolved) for arm minus reference; resolved when |d| > 2 * pooled sd."""
    d = arm[0] - ref[0]
    s = math.sqrt((arm[1] ** 2 + ref[1] ** 2) / 2)
    return d, s, abs(d) > 2 * s


# The chapters whose stored sweeps hold a textbook model's "reference" arm (chapter -> model name).
TEXTBOOK_REFERENCES = {"01_hrvit": "hrvit_textbook", "02_transnext": "transnext_textbook",
                       "03_rtformer": "rtformer_textbook", "04_hiremlp": "hire_mlp_textbook"}


@dataclasses.dataclass(frozen=True)
class ReferenceArm:
    """A chapter's textbook model as its stored sweep trained it: the "reference" arm's seeds."""
    chapter: str
    model: str
    mean: float                  # test mIoU over seeds
    sd: float                    # sample sd (nan for one seed)
    n: int
    steps: int
    batch_size: int
    train_seconds: float         # mean over seeds, as stored (the machine that ran the sweep)


def reference_arms(results_dir: str | Path, profile: str) -> list[ReferenceArm]:
    """Every chapter's stored reference arm (``<results_dir>/<chapter>_ablations_<profile>.json``),
    in chapter order; chapters without a stored sweep are skipped.  Compare rows only where
    ``steps`` and ``batch_size`` match: the chapters state their own ablation budgets."""
    rows = []
    for chapter, model in TEXTBOOK_REFERENCES.items():
        path = Path(results_dir) / f"{chapter}_ablations_{profile}.json"
        if not path.exists():
            continue
        res = load_results(path)
        runs = [r for r in res["runs"] if r["arm"] == "reference"]
        mean, sd, n = summarize({"runs": runs})["reference"]
        rows.append(ReferenceArm(chapter, model, mean, sd, n, res["budget"]["steps"], res["budget"]["batch_size"],
                                 statistics.fmean(r["train_seconds"] for r in runs)))
    return rows
