"""The Preface baseline: a small fully convolutional segmenter every chapter reports against.

Encoder (strides 2, 4, 8; dilated 3x3 convolutions widen the receptive field so a whole 28 px
digit is seen at the 1/8 level), then a light U-Net-style decoder that fuses the three levels
with 1x1 convolutions and predicts at 1/2 resolution.  The last step is a bilinear upsampling:
no convolution ever runs at full resolution, which keeps CPU training in minutes.

    f1 = E1(x)      (B, c1, H/2, W/2)
    f2 = E2(f1)     (B, c2, H/4, W/4)
    f3 = E3(f2)     (B, c3, H/8, W/8)
    d2 = P2([f2, up(f3)]) ,  d1 = P1([f1, up(d2)]) ,  logits = up(W d1)   (B, K, H, W)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import ConvNormAct
from ..nn.checks import check_images, check_model_args
from ..registry import register_model


class PrefaceConvNet(nn.Module):
    def __init__(self, num_classes: int = 11, in_chans: int = 1, widths=(24, 48, 96),
                 norm: str = "bn"):
        check_model_args("PrefaceConvNet", num_classes, in_chans)
        super().__init__()
        c1, c2, c3 = widths
        self.in_chans, self.num_classes = in_chans, num_classes
        self.enc1 = nn.Sequential(ConvNormAct(in_chans, c1, 3, 2, norm=norm),
                                  ConvNormAct(c1, c1, 3, norm=norm))
        self.enc2 = nn.Sequential(ConvNormAct(c1, c2, 3, 2, norm=norm),
                                  ConvNormAct(c2, c2, 3, dilation=2, norm=norm))
        self.enc3 = nn.Sequential(ConvNormAct(c2, c3, 3, 2, norm=norm),
                                  ConvNormAct(c3, c3, 3, dilation=2, norm=norm),
                                  ConvNormAct(c3, c3, 3, dilation=4, norm=norm))
        self.out_channels = (c1, c2, c3)
        if num_classes:
            self.fuse2 = ConvNormAct(c2 + c3, c2, 1, norm=norm)
            self.fuse1 = ConvNormAct(c1 + c2, c1, 1, norm=norm)
            self.classifier = nn.Conv2d(c1, num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_images("PrefaceConvNet", x, self.in_chans)
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"H and W must be multiples of 8, got {tuple(x.shape[-2:])}")
        f1 = self.enc1(x)
        f2 = self.enc2(f1)
        return [f1, f2, self.enc3(f2)]

    def forward(self, x: torch.Tensor):
        f1, f2, f3 = self.forward_features(x)
        if not self.num_classes:
            return [f1, f2, f3]
        up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.fuse2(torch.cat([f2, up(f3, f2)], 1))
        d1 = self.fuse1(torch.cat([f1, up(d2, f1)], 1))
        return F.interpolate(self.classifier(d1), size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model("preface_convnet", paper="preface")
def preface_convnet(num_classes=11, in_chans=1, **kw):
    """Preface baseline: 3-level dilated conv encoder + 1x1 decoder (~0.2 M parameters)."""
    return PrefaceConvNet(num_classes=num_classes, in_chans=in_chans, **kw)


@register_model("preface_convnet_gn", paper="preface")
def preface_convnet_gn(num_classes=11, in_chans=1, **kw):
    """The baseline with GroupNorm: no batch statistics, so sharded (DDP) runs match exactly."""
    return PrefaceConvNet(num_classes=num_classes, in_chans=in_chans, norm="gn", **kw)
