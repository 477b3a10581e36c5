"""Pieces several papers share (norms, conv blocks, drop-path, heads)."""
from .heads import AllMLPHead
from .layers import ConvNormAct, DropPath, make_norm

__all__ = ["AllMLPHead", "ConvNormAct", "DropPath", "make_norm"]
