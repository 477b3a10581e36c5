"""Chapter 06, the capstone: every chapter's textbook model on one task, one budget.

The study (``tools/run_capstone.py`` runs it, ``chapters/results/06_capstone_<profile>.json``
stores it) trains each of :data:`CONTENDERS` with seeds 0, 1, 2 on DigitScenes with the same
:func:`capstone_budget` -- the profile's main budget (800 steps x batch 32, AdamW, warm-up +
cosine), final evaluation only -- and records per run: test mIoU, boundary accuracy, the test
mIoU at 0.75x-2x the training resolution (:func:`~hrvit_edu.train.evaluate.multiscale_miou`) and
the training time.  The ViT's trained weights are also evaluated with chapter 05's token
clustering (:data:`EXPEDITED`; no training, t chosen on validation).

Runs the chapters already stored under the same run key (same model, initial weights, budget and
data: :func:`~hrvit_edu.train.cache.run_key`) with every metric the study needs are reused, not
retrained (chapter 02's sweep records the multi-scale mIoU; the others do not).

Costs that need no training (parameters, FLOPs, latency) are measured live by the chapter with
:func:`measure_costs`; :func:`pareto_front` picks the rows no other row beats on both axes.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .train.budget import Budget
from .train.evaluate import TEST_SCALES, scale_metric

# row name -> (registered model, the chapter that built it)
CONTENDERS: dict[str, tuple[str, str]] = {
    "ConvNet (Preface)": ("preface_convnet", "00_preface"),
    "HRViT": ("hrvit_textbook", "01_hrvit"),
    "TransNeXt": ("transnext_textbook", "02_transnext"),
    "RTFormer": ("rtformer_textbook", "03_rtformer"),
    "Hire-MLP": ("hire_mlp_textbook", "04_hiremlp"),
    "ViT": ("vit_seg_textbook", "05_expedite"),
}
# row name -> the operator its chapter wrote a Triton kernel for (``hrvit_edu.kernels``)
HOT_OPS: dict[str, str] = {
    "ConvNet (Preface)": "none (convolutions only)",
    "HRViT": "hrvit_edu::des, hrvit_edu::window_attention",
    "TransNeXt": "hrvit_edu::aggregated_attention, hrvit_edu::scaled_window_attention",
    "RTFormer": "hrvit_edu::external_attention_fwd",
    "Hire-MLP": "hrvit_edu::region_linear",
    "ViT": "(plain attention: torch SDPA)",
}
EXPEDITED = "ViT + token clustering"          # the ViT row's trained weights, expedited (chapter 05)
HOT_OPS[EXPEDITED] = "hrvit_edu::local_em, hrvit_edu::topk_reconstruction"
SEEDS = (0, 1, 2)
METRICS = ("test_miou", "boundary_acc", *(scale_metric(f) for f in TEST_SCALES))


def capstone_budget(budget: Budget) -> Budget:
    """One budget for every contender: the profile's main budget with the final evaluation only
    (no validation passes, which would cost the slow models more wall-clock than the fast ones)."""
    return budget.replace(eval_every=0)


def results_path(root: str | Path, profile: str) -> Path:
    return Path(root) / "chapters" / "results" / f"06_capstone_{profile}.json"


def contender(name: str, seed: int) -> nn.Module:
    """A fresh contender, built right after seeding (the same weights every chapter's sweep built)."""
    import hrvit_edu

    torch.manual_seed(seed)
    return hrvit_edu.create_model(CONTENDERS[name][0])


def expected_keys(data, budget: Budget, seeds=SEEDS) -> dict[tuple[str, int], str]:
    """The run key the current code gives every (row, seed): builds the models, trains nothing."""
    from .train.cache import run_key

    return {(name, s): run_key(contender(name, s), data, budget.replace(seed=s)) for name in CONTENDERS for s in seeds}


def reusable(results_dir: str | Path, profile: str, name: str, key: str) -> tuple[dict, str] | None:
    """A stored run of the contender's own chapter with run key ``key`` and every metric of
    :data:`METRICS`, and the file it came from; None when there is none."""
    from .train.ablation import load_results

    path = Path(results_dir) / f"{CONTENDERS[name][1]}_ablations_{profile}.json"
    if not path.exists():
        return None
    for r in load_results(path)["runs"]:
        if r["key"] == key and all(m in r for m in METRICS):
            return {m: r[m] for m in (*METRICS, "train_seconds")}, path.name
    return None


def expedite_metrics(model: nn.Module, data) -> dict:
    """Chapter 05 applied to a trained ViT at the training resolution: the paper's placement on
    this token grid, t chosen on validation (:func:`~hrvit_edu.models.expedite.choose_t`)."""
    from .models import expedite as E

    model.eval()
    canvas = data.test[0][0].shape[-1]
    grid = (canvas // model.cfg.patch,) * 2
    placement = E.paper_placement(model.cfg, grid)
    t, scores = E.choose_t(model, data.val, placement)
    placement = dataclasses.replace(placement, t=t)
    ratio = E.vit_macs(model.cfg, grid, placement)["total"] / E.vit_macs(model.cfg, grid)["total"]
    return {"test_miou": E.miou_of(model, data.test, placement), "t": t, "clusters": list(placement.clusters),
            "alpha": placement.alpha, "block_macs_ratio": ratio, "val_t_scores": {str(k): v for k, v in scores.items()}}


def run_study(path: str | Path, profile, seeds=SEEDS, cache: str | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Train (or reuse) every contender x seed, evaluate, and write ``path`` after every run (an
    interrupted study resumes: runs already stored under their key are skipped)."""
    from .bench import env_info
    from .data import digitscenes_bundle
    from .train import boundary_accuracy, fit
    from .train.ablation import save_results
    from .train.cache import run_key
    from .train.evaluate import multiscale_miou

    path = Path(path)
    out = json.loads(path.read_text()) if path.exists() else {"runs": []}
    budget = capstone_budget(profile.budget)
    out.update(budget=dataclasses.asdict(budget), profile=profile.name)
    out.setdefault("env", env_info("cpu"))
    data = digitscenes_bundle(profile.scenes)
    done = {(r["row"], r["key"]) for r in out["runs"]}
    for name, (model_name, chapter) in CONTENDERS.items():
        for seed in seeds:
            model = contender(name, seed)
            b = budget.replace(seed=seed)
            key = run_key(model, data, b)
            if (name, key) in done:
                continue
            stale = {name, EXPEDITED} if model_name == "vit_seg_textbook" else {name}
            out["runs"] = [r for r in out["runs"] if not (r["seed"] == seed and r["row"] in stale)]
            stored = reusable(path.parent, profile.name, name, key)
            if stored is not None:
                rec, source = stored
            else:
                out["env"] = env_info("cpu")              # the machine (and threads) that trained the runs
                hist = fit(model, data, b, progress=False, cache=cache)
                rec = {"test_miou": hist.test_miou, "boundary_acc": boundary_accuracy(model, data.test),
                       **multiscale_miou(model, profile.scenes), "train_seconds": hist.train_seconds}
                source = "tools/run_capstone.py"
            out["runs"].append({"row": name, "model": model_name, "chapter": chapter, "seed": seed, "key": key,
                                "source": source, **rec})
            log(f"{name} seed {seed}: test mIoU {rec['test_miou']:.3f} ({source})")
            if model_name == "vit_seg_textbook":
                if source != "tools/run_capstone.py":
                    raise RuntimeError("the expedited row needs the ViT's trained weights; retrain it")
                e = expedite_metrics(model, data)
                out["runs"].append({"row": EXPEDITED, "model": model_name, "chapter": chapter, "seed": seed,
                                    "key": key, "source": source, "train_seconds": 0.0, **e})
                log(f"{EXPEDITED} seed {seed}: test mIoU {e['test_miou']:.3f} (t = {e['t']})")
            save_results(out, path)
    from .claims import count_claims
    out["counted"] = count_claims()
    save_results(out, path)
    return out


def check_keys(results: dict, keys: dict[tuple[str, int], str]) -> None:
    """Raise unless ``results`` holds a run of every expected (row, seed) under the key the current
    code gives it (a stale file from older code or another budget is refused)."""
    from .train.ablation import check_results

    check_results(results, keys, field="row", what="capstone results", fix="re-run `python tools/run_capstone.py`")


@dataclasses.dataclass(frozen=True)
class Row:
    """One leaderboard row: a contender's runs summarised over seeds (mean, sample sd, n)."""
    name: str
    model: str
    chapter: str
    miou: tuple[float, float, int]
    boundary_acc: tuple[float, float, int] | None
    per_seed: tuple[float, ...]
    scales: dict[float, tuple[float, float, int]]      # test-resolution factor -> mIoU summary
    train_seconds: float


def _summary(values: list[float]) -> tuple[float, float, int]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan"), len(values)


def leaderboard(results: dict) -> list[Row]:
    """The stored runs summarised per row, in :data:`CONTENDERS` order (the expedited ViT last)."""
    rows = []
    for name in (*CONTENDERS, EXPEDITED):
        runs = sorted((r for r in results["runs"] if r["row"] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        scales = {f: _summary([r[scale_metric(f)] for r in runs]) for f in TEST_SCALES
                  if all(scale_metric(f) in r for r in runs)}
        rows.append(Row(name, runs[0]["model"], runs[0]["chapter"], _summary([r["test_miou"] for r in runs]),
                        _summary([r["boundary_acc"] for r in runs]) if all("boundary_acc" in r for r in runs) else None,
                        tuple(r["test_miou"] for r in runs), scales,
                        statistics.fmean(r["train_seconds"] for r in runs)))
    return rows


def pareto_front(cost: list[float], quality: list[float]) -> list[int]:
    """Indices of the points no other point dominates (cost <= and quality >=, one of them strictly),
    in increasing cost.  Ties on both axes keep both points."""
    if len(cost) != len(quality):
        raise ValueError(f"pareto_front: {len(cost)} costs but {len(quality)} qualities")
    keep = []
    for i, (c, q) in enumerate(zip(cost, quality)):
        dominated = any(c2 <= c and q2 >= q and (c2 < c or q2 > q) for c2, q2 in zip(cost, quality))
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (cost[i], -quality[i]))


# ------------------------------------------------------------------------ costs (no training needed)
COST_SIZES = (64, 128)           # the training resolution and 2x: where attention's share grows


def expedited_at(model: nn.Module, size: int, t: float) -> nn.Module:
    """The ViT expedited at the paper's placement for a ``size`` x ``size`` input (the cluster grid
    follows the token grid), sharing ``model``'s weights."""
    from .models import expedite as E

    grid = (size // model.cfg.patch,) * 2
    return E.Expedited(model, dataclasses.replace(E.paper_placement(model.cfg, grid), t=t))


def measure_costs(t_expedite: float, sizes=COST_SIZES, batch: int = 1, min_run_time: float = 0.5,
                  rows=None, device: str | torch.device = "cpu") -> list[dict]:
    """Parameters, FLOPs (``torch.utils.flop_counter``, attention counted on the math backend), peak
    activation memory (:func:`~hrvit_edu.bench.peak_memory`: the tensors torch ops return, alive at
    once) and eager latency (median, p20, p80 in ms, after warm-up) of every row at each of
    ``sizes``, inference (no autograd), on ``device`` (on CUDA the models run their Triton kernels
    where they have them).  The weights do not matter for any of them: fresh models are measured."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .bench import count_flops, count_params, peak_memory, time_fn

    out = []
    for name in rows or (*CONTENDERS, EXPEDITED):
        base = contender("ViT" if name == EXPEDITED else name, 0).eval().to(device)
        rec = {"row": name, "device": str(device), "params": count_params(base), "flops": {}, "peak_bytes": {},
               "latency_ms": {}}
        for size in sizes:
            model = expedited_at(base, size, t_expedite) if name == EXPEDITED else base
            x = torch.randn(batch, 1, size, size, device=device)
            with torch.no_grad():
                if torch.device(device).type == "cpu":    # a Triton op (CUDA) has no FLOP formula: count on CPU
                    with sdpa_kernel(SDPBackend.MATH):
                        rec["flops"][str(size)] = count_flops(lambda: model(x))
                rec["peak_bytes"][str(size)] = peak_memory(lambda: model(x), device)
                med, p20, p80, n = time_fn(lambda: model(x), device, min_run_time=min_run_time)
            rec["latency_ms"][str(size)] = {"median": med, "p20": p20, "p80": p80, "calls": n}
        out.append(rec)
    return out


COSTS_FILE = "06_capstone_costs.json"


def save_costs(costs: list[dict], batch: int = 1) -> Path | None:
    """Hand the live cost measurements to the book's report (``$HRVIT_EDU_REPORT_DIR``, set by the
    book runner), device-stamped; does nothing (returns None) outside a book run."""
    import os

    from .bench import env_info
    from .notebook import REPORT_DIR_ENV

    folder = os.environ.get(REPORT_DIR_ENV)
    if not folder:
        return None
    path = Path(folder) / COSTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"env": env_info("cpu"), "batch": batch, "rows": costs}, indent=1))
    return path


# ------------------------------------------------------------------------ the architecture picture
def resolution_trace(model: nn.Module, size: int = 64, max_depth: int = 2) -> list[tuple[str, int, int]]:
    """(module name, output stride, channels) of every feature map the modules at most
    ``max_depth`` levels deep produce, in execution order, for one ``size`` x ``size`` image:
    4-D maps (B, C, H, W) give stride size / H; token tensors (B, N, C) give size / sqrt(N) (a
    leading CLS token dropped).  Lists and tuples of maps (the branches of a multi-branch stage)
    give one entry per branch."""
    out: list[tuple[str, int, int]] = []

    def visit(name, t):
        if isinstance(t, (list, tuple)):
            for v in t:
                visit(name, v)
        elif isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[-1] > 1:
            out.append((name, size // t.shape[-1], t.shape[1]))
        elif isinstance(t, torch.Tensor) and t.dim() == 3:
            n = t.shape[1] - (1 if round((t.shape[1] - 1) ** 0.5) ** 2 == t.shape[1] - 1 else 0)
            side = round(n ** 0.5)
            if side * side == n and side > 1:
                out.append((name, size // side, t.shape[2]))

    handles = [m.register_forward_hook(lambda m, i, o, name=name: visit(name, o))
               for name, m in model.named_modules() if name and name.count(".") < max_depth]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, size, size))
    finally:
        for h in handles:
            h.remove()
    return out
