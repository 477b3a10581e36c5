"""Run chapter 01's single-change ablations (every arm x 3 seeds, plus a one-seed learning-rate
sweep: ``hrvit_edu.models.hrvit.ablation_sweep``) and store the results.

    .venv/bin/python tools/run_ablations.py [--profile book]

Writes ``chapters/results/01_hrvit_ablations_<profile>.json`` after every run (an interrupted
sweep resumes).  The chapter loads the file, checks every run key against the current code and
re-trains one run live to confirm it.  About 45 minutes on 2 CPU cores for the book profile.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import hrvit_edu
from hrvit_edu.bench import env_info
from hrvit_edu.data import digitscenes_bundle
from hrvit_edu.models.hrvit import ablation_budget, ablation_sweep
from hrvit_edu.profiles import get_profile
from hrvit_edu.train.ablation import run_ablation

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="book")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    data = digitscenes_bundle(profile.scenes)
    path = ROOT / "chapters" / "results" / f"01_hrvit_ablations_{profile.name}.json"
    make = lambda **kw: hrvit_edu.create_model("hrvit_textbook", **kw)  # noqa: E731
    budget = ablation_budget(profile.budget)
    for arms, seeds in ablation_sweep():
        res = run_ablation(make, arms, seeds, data, budget, path=path, env=env_info("cpu"))
    print(f"{len(res['runs'])} runs -> {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
