"""Run a chapter's single-change ablations (every arm x 3 seeds, plus chapter 01's one-seed
learning-rate sweep: the model module's ``ablation_sweep``) and store the results.

    .venv/bin/python tools/run_ablations.py [--chapter 01_hrvit|02_transnext|03_rtformer|04_hiremlp] [--profile book]

Writes ``chapters/results/<chapter>_ablations_<profile>.json`` after every run (an interrupted
sweep resumes).  The chapter loads the file, checks every run key against the current code and
re-trains one run live to confirm it.  Book profile on 2 CPU cores: about 45 minutes for
chapter 01, 30 for chapter 02, 30 for chapter 03, 20 for chapter 04.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import torch

import hrvit_edu
from hrvit_edu.bench import env_info
from hrvit_edu.data import digitscenes_bundle
from hrvit_edu.profiles import get_profile
from hrvit_edu.train.ablation import run_ablation

ROOT = Path(__file__).resolve().parents[1]
# chapter -> model module (and <module>_textbook)
CHAPTERS = {"01_hrvit": "hrvit", "02_transnext": "transnext", "03_rtformer": "rtformer",
            "04_hiremlp": "hire_mlp"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chapter", default="01_hrvit", choices=sorted(CHAPTERS))
    ap.add_argument("--profile", default="book")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    module = importlib.import_module(f"hrvit_edu.models.{CHAPTERS[args.chapter]}")
    profile = get_profile(args.profile)
    data = digitscenes_bundle(profile.scenes)
    path = ROOT / "chapters" / "results" / f"{args.chapter}_ablations_{profile.name}.json"
    make = lambda **kw: hrvit_edu.create_model(f"{CHAPTERS[args.chapter]}_textbook", **kw)  # noqa: E731
    budget = module.ablation_budget(profile.budget)           # each chapter states its ablation budget
    for arms, seeds in module.ablation_sweep():
        res = run_ablation(make, arms, seeds, data, budget, path=path, env=env_info("cpu"),
                           extra=getattr(module, "ablation_extra", None))
    print(f"{len(res['runs'])} runs -> {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
