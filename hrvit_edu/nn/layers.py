"""Small building blocks every model in the book uses."""
from __future__ import annotations

import torch.nn as nn


def make_norm(kind: str, channels: int) -> nn.Module:
    """'bn' BatchNorm2d, 'gn' GroupNorm (per-sample: no batch statistics), 'none' identity."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'bn', 'gn' or 'none'")


class ConvNormAct(nn.Sequential):
    """y = act(norm(conv_k(x))): a k x k convolution (same padding) with optional stride/dilation."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1, norm: str = "bn", act: type[nn.Module] | None = nn.ReLU):
        pad = dilation * (k - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=norm == "none"),
            make_norm(norm, cout),
            act() if act is not None else nn.Identity(),
        )


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability ``p``.

    y = x * m / (1 - p),  m ~ Bernoulli(1 - p) per sample (identity in eval mode or p = 0).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
