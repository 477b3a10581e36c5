"""Train a registered model on DigitScenes from the command line, on one process or many.

    python -m hrvit_edu.train --model preface_convnet --profile book
    torchrun --nproc_per_node 2 -m hrvit_edu.train --model preface_convnet_gn   # DDP (gloo on CPU)
"""
from __future__ import annotations

import argparse
import ast
import os

import torch
import torch.distributed as dist

from .. import create_model
from ..data import digitscenes_bundle
from ..profiles import get_profile
from ..seeding import seed_everything
from .loop import fit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="preface_convnet")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="model override passed to create_model, e.g. --set drop_path=0.1 (repeatable)")
    args = ap.parse_args(argv)
    if args.resume and not args.checkpoint:
        ap.error("--resume needs --checkpoint PATH (the checkpoint to continue from)")

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = "cpu"
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
    elif torch.cuda.is_available():
        device = "cuda"
    prof = get_profile(args.profile)
    budget = prof.budget
    if args.steps is not None:   # keep the warm-up the same fraction of the run
        budget = budget.replace(steps=args.steps,
                                warmup_steps=budget.warmup_steps * args.steps // budget.steps)
    seed_everything(args.seed)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    model = create_model(args.model, **overrides)
    history = fit(model, digitscenes_bundle(prof.scenes), budget, device=device,
                  checkpoint=args.checkpoint, checkpoint_every=max(1, budget.steps // 10),
                  resume=args.resume)
    if not distributed or dist.get_rank() == 0:
        print(f"{args.model}: test mIoU {history.test_miou:.4f}, pixel acc "
              f"{history.test['pixel_acc']:.4f}, {history.train_seconds:.0f} s")
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
