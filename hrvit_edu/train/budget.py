"""How much training a run gets, and its learning-rate schedule.

    lr(t) = lr * (t + 1) / T_w                                              t <  T_w
    lr(t) = lr * (r + (1 - r) * (1 + cos(pi * u)) / 2),  u = min(1, (t - T_w) / (T - T_w))
                                                                            t >= T_w
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much training a run gets.  Profiles (:mod:`hrvit_edu.profiles`) hold named ones."""

    steps: int = 1000
    batch_size: int = 32              # global batch (split across ranks under DDP)
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0            # 0: no clipping
    eval_every: int = 250             # periodic eval on ``data.val`` (0 = only at the end)
    eval_batch_size: int = 100
    seed: int = 0

    def __post_init__(self):
        def need(ok: bool, what: str, value):
            if not ok:
                raise ValueError(f"Budget: {what}, got {value!r}")
        need(self.steps >= 1, "steps must be >= 1", self.steps)
        need(self.batch_size >= 1, "batch_size must be >= 1", self.batch_size)
        need(0 <= self.warmup_steps < self.steps, "warmup_steps must be in [0, steps)", self.warmup_steps)
        need(math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number", self.lr)
        need(self.weight_decay >= 0, "weight_decay must be >= 0", self.weight_decay)
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]", self.min_lr_ratio)
        need(self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)", self.grad_clip)
        need(self.eval_every >= 0, "eval_every must be >= 0 (0 = only at the end)", self.eval_every)
        need(self.eval_batch_size >= 1, "eval_batch_size must be >= 1", self.eval_batch_size)

    def replace(self, **kw) -> "Budget":
        return dataclasses.replace(self, **kw)


def lr_factor(step: int, budget: Budget) -> float:
    """Multiplier of ``budget.lr`` at ``step`` (warm-up, then cosine to ``min_lr_ratio``)."""
    if step < budget.warmup_steps:
        return (step + 1) / budget.warmup_steps
    t = (step - budget.warmup_steps) / max(1, budget.steps - budget.warmup_steps)
    r = budget.min_lr_ratio
    return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
