"""Pieces several papers share (norms, conv blocks, heads)."""
from .layers import ConvNormAct, make_norm

__all__ = ["ConvNormAct", "make_norm"]
