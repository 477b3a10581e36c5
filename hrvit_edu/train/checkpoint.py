"""Checkpoints: everything a run needs to continue exactly (model, optimiser, schedule, RNG,
history), written atomically and checked against the model before anything is loaded."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from .._io import atomic_write, read_or_explain
from .distributed import unwrap
from .history import History

CHECKPOINT_FORMAT = 1


def model_fingerprint(model: nn.Module) -> str:
    """Class name plus every parameter's name and shape: two models share it iff they load each other."""
    m = unwrap(model)
    shapes = ",".join(f"{k}:{tuple(v.shape)}" for k, v in m.state_dict().items())
    return f"{type(m).__name__}|{shapes}"


def _tensors(fingerprint: str) -> dict[str, str]:
    """'Cls|a.weight:(3, 4),a.bias:(3,)' -> {'a.weight': '(3, 4)', 'a.bias': '(3,)'}."""
    body = fingerprint.split("|", 1)[1] if "|" in fingerprint else ""
    out, i = {}, 0
    while i < len(body):
        colon = body.index(":", i)
        close = body.index(")", colon)
        out[body[i:colon]] = body[colon + 1:close + 1]
        i = close + 2
    return out


def describe_mismatch(theirs: str, mine: str) -> str:
    """What differs between two fingerprints, in one line."""
    name_t, name_m = theirs.split("|")[0], mine.split("|")[0]
    if name_t != name_m:
        return f"it holds a {name_t}, the model is a {name_m}"
    t, m = _tensors(theirs), _tensors(mine)
    for key in m:
        if key in t and t[key] != m[key]:
            return f"{key} is {t[key]} in the checkpoint but {m[key]} in the model"
    missing, extra = [k for k in m if k not in t], [k for k in t if k not in m]
    if missing:
        more = f" and {len(missing) - 1} more tensors" if len(missing) > 1 else ""
        return f"the checkpoint lacks {missing[0]}{more}"
    if extra:
        return f"the checkpoint has {extra[0]}, which the model lacks"
    return "their parameter lists differ"


def save_checkpoint(path, model, optimizer, scheduler, step: int, history: History) -> None:
    state = {"format": CHECKPOINT_FORMAT, "fingerprint": model_fingerprint(model),
             "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "history": history.to_dict(),
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    atomic_write(path, lambda tmp: torch.save(state, tmp))      # a crash never leaves half a checkpoint


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict:
    """Read a checkpoint (``weights_only=True``) and check it belongs to ``model``."""
    path = Path(path)
    state = read_or_explain(path, lambda p: torch.load(p, map_location="cpu", weights_only=True), "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        what = f"format {state.get('format')!r}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ValueError(f"{path}: not a hrvit_edu checkpoint ({what}); save one with fit(checkpoint=...)")
    mine = model_fingerprint(model)
    if state["fingerprint"] != mine:
        raise ValueError(f"{path} is a checkpoint of another model: {describe_mismatch(state['fingerprint'], mine)}; "
                         "refusing to resume")
    return state
