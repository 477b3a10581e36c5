"""Chapter 05's claims across training seeds: train the textbook ViT with seeds 0, 1, 2 (the
chapter's budget), choose t on validation study scenes, evaluate every claim arm on the test study
scenes, and store the numbers.

    .venv/bin/python tools/run_expedite_seeds.py [--profile book] [--seeds 0 1 2]

Writes ``chapters/results/05_expedite_seeds_<profile>.json`` after every seed (an interrupted run
resumes).  Each record carries a key of the model config, budget and scenes; the chapter checks
the keys against the current code.  Book profile on 2 CPU cores: about 5 minutes per seed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

import hrvit_edu
from hrvit_edu.bench import env_info
from hrvit_edu.data import digitscenes_bundle
from hrvit_edu.data.datasets import DigitScenes
from hrvit_edu.models import expedite as E
from hrvit_edu.profiles import get_profile
from hrvit_edu.train import fit
from hrvit_edu.train.ablation import save_results

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="book")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    path = ROOT / "chapters" / "results" / f"05_expedite_seeds_{profile.name}.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": [], "env": env_info("cpu")}
    data = digitscenes_bundle(profile.scenes)
    budget = E.textbook_budget(profile.budget)
    study = E.study_scenes(profile.scenes)
    val_set, test_set = DigitScenes("val", study), DigitScenes("test", study)
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = hrvit_edu.create_model("vit_seg_textbook")
        key = E.study_key(model, budget.replace(seed=seed), study)
        if any(r["key"] == key for r in results["runs"]):
            print(f"seed {seed}: stored")
            continue
        hist = fit(model, data, budget.replace(seed=seed), progress=False)
        model.eval()
        placement = E.paper_placement(model.cfg, (study.canvas // model.cfg.patch,) * 2)
        t_star, t_scores = E.choose_t(model, val_set, placement)
        placement = dataclasses.replace(placement, t=t_star)
        for arm, cfg in E.claim_arms(placement).items():
            results["runs"].append({"arm": arm, "seed": seed, "key": key, "t": t_star,
                                    "test_miou": E.miou_of(model, test_set, cfg),
                                    "train_test_miou": hist.test_miou, "train_seconds": hist.train_seconds,
                                    "val_t_scores": {str(k): v for k, v in t_scores.items()}})
        save_results(results, path)
        print(f"seed {seed}: trained {hist.test_miou:.3f} in {hist.train_seconds:.0f} s, t* = {t_star}")
    print(f"{len(results['runs'])} records -> {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
