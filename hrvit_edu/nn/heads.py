"""Segmentation heads shared by the book's backbones."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class AllMLPHead(nn.Module):
    """SegFormer-style all-MLP decoder, as the HRViT/SegFormer configs use it.

    For feature maps F_i (B, C_i, H_i, W_i), i = 1..4, the first at the finest stride:

        G_i = up(W_i F_i + b_i)  to (H_1, W_1)            1x1 conv, no norm/act, bilinear
        Z   = Dropout2d(ReLU(BN(W_f [G_1; ...; G_4])))     1x1 conv 4E -> E, no bias
        logits = W_c Z + b_c                               (B, K, H_1, W_1)
    """

    def __init__(self, in_channels, embed_dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = nn.Sequential(nn.Conv2d(len(in_channels) * embed_dim, embed_dim, 1, bias=False),
                                  nn.BatchNorm2d(embed_dim), nn.ReLU())
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        g = [F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size
             else p(f) for p, f in zip(self.proj, feats)]
        return self.classifier(self.drop(self.fuse(torch.cat(g, 1))))

    def logits_at(self, feats: list[torch.Tensor], size) -> torch.Tensor:
        """The head's logits (at the finest map) bilinearly resized to ``size`` (the input's H, W):
        what every segmenter in the book returns."""
        return F.interpolate(self(feats), size=size, mode="bilinear", align_corners=False)
