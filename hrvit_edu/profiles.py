"""Named budgets: ``ci`` (unit-test smoke runs), ``book`` (default: 2 CPU cores, minutes),
``full`` (a GPU).  Select with ``HRVIT_EDU_PROFILE`` or pass a name explicitly."""
from __future__ import annotations

import dataclasses
import os

from .data.digitscenes import SceneConfig
from .train.budget import Budget

ENV_VAR = "HRVIT_EDU_PROFILE"
DEFAULT = "book"


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    scenes: SceneConfig
    budget: Budget
    description: str


PROFILES: dict[str, Profile] = {
    "ci": Profile("ci", SceneConfig(num_train=512, num_val=64, num_test=64),
                  Budget(steps=20, batch_size=16, warmup_steps=5, eval_every=10, eval_batch_size=64),
                  "smoke runs for unit tests: seconds, no accuracy target"),
    "book": Profile("book", SceneConfig(num_train=10_000, num_val=250, num_test=500),
                    Budget(steps=800, batch_size=32, warmup_steps=40, eval_every=200),
                    "the default: every chapter trains in a few minutes on 2 CPU cores"),
    "full": Profile("full", SceneConfig(num_train=40_000, num_val=1000, num_test=2000),
                    Budget(steps=10_000, batch_size=64, warmup_steps=500, eval_every=1000,
                           eval_batch_size=250),
                    "for a GPU: 10x the steps, 4x the data"),
}


def get_profile(name: str | None = None) -> Profile:
    """The named profile, else ``$HRVIT_EDU_PROFILE``, else ``book``.  Unknown names raise."""
    source = "argument" if name else ENV_VAR
    name = name or os.environ.get(ENV_VAR) or DEFAULT
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (from {source}); "
                         f"choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]
