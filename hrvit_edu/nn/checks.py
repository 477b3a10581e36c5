"""Input checks every model of the book shares: one clear error instead of a failure deep in torch."""
from __future__ import annotations

import torch


def check_model_args(name: str, num_classes: int, in_chans: int) -> None:
    """``num_classes >= 0`` (0: backbone only) and ``in_chans >= 1``, both integers."""
    for arg, value, low in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: {arg} must be an integer >= {low}, got {value!r}")


def check_images(name: str, x, in_chans: int) -> None:
    """A float image batch (B, in_chans, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected an image tensor (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"{name}: expected input (B, {in_chans}, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point image batch, got {x.dtype} "
                        "(convert with x.float() / 255 for 8-bit images)")
