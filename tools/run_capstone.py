"""Chapter 06's study: every textbook model x seeds 0, 1, 2 on DigitScenes at one budget, plus the
trained ViTs expedited (chapter 05), evaluated at 0.75x-2x the training resolution.

    .venv/bin/python tools/run_capstone.py [--profile book] [--seeds 0 1 2] [--cache DIR]

Writes ``chapters/results/06_capstone_<profile>.json`` after every run (an interrupted study
resumes).  Runs a chapter's stored sweep already holds under the same run key, with every metric,
are reused.  Book profile on 2 CPU cores: about 35 minutes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hrvit_edu import capstone
from hrvit_edu.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="book")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(capstone.SEEDS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None, help="a run cache folder: keep the trained weights there")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    profile = get_profile(args.profile)
    path = capstone.results_path(ROOT, profile.name)
    out = capstone.run_study(path, profile, args.seeds, cache=args.cache, log=lambda s: print(s, flush=True))
    print(f"{len(out['runs'])} records -> {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
