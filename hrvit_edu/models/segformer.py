"""SegFormer's Mix Transformer (MiT, Xie et al., NeurIPS 2021): the comparator HRViT's paper counts
itself against.  Built here to *count* parameters and FLOPs of the published configurations
(chapter 01, "claims re-tested"); the book does not train it.

Four stages at strides 4, 8, 16, 32.  Stage i: an overlapping patch embedding (conv k7/s4/p3 for
the first stage, k3/s2/p1 after; LayerNorm), ``depth_i`` blocks, a LayerNorm.  Block on tokens X:

    X <- X + EffAttn(LN(X)),   X <- X + MixFFN(LN(X))
    EffAttn: Q = X W_q;  [K | V] = R(X) W_kv  with R = conv k=s=r (spatial reduction) + LN when r > 1
             softmax(Q K^T / sqrt(d)) V, heads concatenated, W_o
    MixFFN:  W_2 GELU(DW3x3(W_1 X))      (hidden 4C)

The head is the same all-MLP decoder as HRViT's (``hrvit_edu.nn.AllMLPHead``).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import AllMLPHead
from ..nn.checks import check_images, check_model_args
from ..registry import register_model


class EfficientAttention(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int):
        super().__init__()
        self.heads, self.sr = heads, sr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.reduce = nn.Conv2d(dim, dim, sr, stride=sr)
            self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        split = lambda t: t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q = split(self.q(x))
        if self.sr > 1:
            x = self.norm(self.reduce(x.transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).chunk(2, dim=-1)
        attn = torch.softmax(q @ split(k).transpose(-1, -2) * (c // self.heads) ** -0.5, dim=-1)
        return self.proj((attn @ split(v)).transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    def __init__(self, dim: int, ratio: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(dim, ratio * dim)
        self.dw = nn.Conv2d(ratio * dim, ratio * dim, 3, padding=1, groups=ratio * dim)
        self.fc2 = nn.Linear(ratio * dim, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.fc1(x).transpose(1, 2).reshape(b, -1, *hw)
        return self.fc2(F.gelu(self.dw(h)).flatten(2).transpose(1, 2))


class MiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), EfficientAttention(dim, heads, sr)
        self.norm2, self.ffn = nn.LayerNorm(dim, eps=1e-6), MixFFN(dim)

    def forward(self, x, hw):
        x = x + self.attn(self.norm1(x), hw)
        return x + self.ffn(self.norm2(x), hw)


@dataclasses.dataclass(frozen=True)
class MiTConfig:
    dims: tuple[int, ...] = (64, 128, 320, 512)
    heads: tuple[int, ...] = (1, 2, 5, 8)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    sr: tuple[int, ...] = (8, 4, 2, 1)
    head_dim: int = 256


class MiT(nn.Module):
    """MiT backbone (``num_classes=0``: the four stage maps) or SegFormer (logits at input size)."""

    def __init__(self, cfg: MiTConfig, *, num_classes: int, in_chans: int):
        check_model_args("MiT", num_classes, in_chans)
        super().__init__()
        self.cfg, self.in_chans, self.num_classes = cfg, in_chans, num_classes
        self.embeds, self.stages, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin = in_chans
        for i, (d, h, n, r) in enumerate(zip(cfg.dims, cfg.heads, cfg.depths, cfg.sr)):
            k, s = (7, 4) if i == 0 else (3, 2)
            self.embeds.append(nn.ModuleDict({"proj": nn.Conv2d(cin, d, k, stride=s, padding=k // 2),
                                              "norm": nn.LayerNorm(d, eps=1e-5)}))
            self.stages.append(nn.ModuleList(MiTBlock(d, h, r) for _ in range(n)))
            self.norms.append(nn.LayerNorm(d, eps=1e-6))
            cin = d
        self.head = AllMLPHead(cfg.dims, cfg.head_dim, num_classes) if num_classes else None

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_images("MiT", x, self.in_chans)
        outs = []
        for emb, blocks, norm in zip(self.embeds, self.stages, self.norms):
            x = emb["proj"](x)
            b, _, h, w = x.shape
            t = emb["norm"](x.flatten(2).transpose(1, 2))
            for blk in blocks:
                t = blk(t, (h, w))
            x = norm(t).transpose(1, 2).reshape(b, -1, h, w)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor):
        feats = self.forward_features(x)
        if self.head is None:
            return feats
        return self.head.logits_at(feats, x.shape[-2:])


VARIANTS = {
    "b1": MiTConfig(),
    "b2": MiTConfig(depths=(3, 4, 6, 3), head_dim=768),
    "b3": MiTConfig(depths=(3, 4, 18, 3), head_dim=768),
}
# SegFormer paper, Table 1 (ADE20K, 512 x 512): params (M) with the all-MLP head, 150 classes.
PUBLISHED_PARAMS = {"b1": 13.7e6, "b2": 27.5e6, "b3": 47.3e6}


def _factory(variant: str):
    def make(num_classes=11, in_chans=1, **overrides):
        return MiT(dataclasses.replace(VARIANTS[variant], **overrides), num_classes=num_classes, in_chans=in_chans)
    make.__doc__ = f"SegFormer-{variant.upper()} (MiT-{variant}): the comparator of chapter 01, counted, not trained"
    return make


for _v in VARIANTS:
    register_model(f"segformer_{_v}", paper="segformer")(_factory(_v))
