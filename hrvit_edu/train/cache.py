"""The run cache: a finished run (weights + history) stored under a key of everything that
determines it, so a later chapter reports against an earlier chapter's model without retraining."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from .._io import atomic_write, read_or_explain
from ..data.datasets import DataBundle
from .budget import Budget
from .checkpoint import model_fingerprint
from .distributed import unwrap
from .history import History


def run_key(model: nn.Module, data: DataBundle, budget: Budget) -> str:
    """Identity of a finished run: model structure, budget, data config, package version.

    The structure is the parameter names and shapes *and* the module tree's ``repr`` (strides,
    activations) *and* the model's ``cfg`` when it has one (window sizes, mask values): two
    configurations with identical weights (e.g. a stride or an activation changed) must not share
    a cached run.
    """
    from .. import __version__

    m = unwrap(model)
    desc = {"model": model_fingerprint(model), "modules": repr(m), "config": repr(getattr(m, "cfg", None)),
            "budget": dataclasses.asdict(budget),
            "data": repr(getattr(data.train, "config", type(data.train).__name__)),
            "augment": repr(getattr(data.train, "augment", None)), "version": __version__,
            "init": float(sum(p.detach().double().sum() for p in model.parameters()))}
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def run_path(cache: str | os.PathLike, model: nn.Module, data: DataBundle, budget: Budget) -> Path:
    return Path(cache) / f"run-{run_key(model, data, budget)}.pt"


def load_run(path: Path, model: nn.Module) -> History:
    state = read_or_explain(path, lambda p: torch.load(p, map_location="cpu", weights_only=True), "cached run")
    unwrap(model).load_state_dict(state["model"])
    history = History.from_dict(state["history"])
    history.cached = True
    return history


def store_run(path: Path, model: nn.Module, history: History) -> None:
    state = {"model": {k: v.cpu() for k, v in unwrap(model).state_dict().items()},
             "history": history.to_dict()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
