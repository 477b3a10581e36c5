"""CSWin Transformer (Dong et al., CVPR 2022): the second comparator of HRViT's headline ("28% fewer
parameters and 21% fewer FLOPs than MiT and CSWin").  Built here to *count* the published
configurations (chapter 01, "claims re-tested"); the book does not train it.

HRViT borrows CSWin's cross-shaped windows, so the two attention layers are worth setting side by
side.  A CSWin block on tokens X (B, H, W, C):

    X <- X + W_o [ A_h(LN(X)) | A_v(LN(X)) ],     X <- X + MLP(LN(X))          (hidden 4C, GELU)
    [Q | K | V] = LN(X) W_qkv + b                   three projections: no K/V sharing (HRViT: K = V)
    A_*:  softmax(Q K^T / sqrt(d)) V + LePE(V)      per stripe, half of the heads each
    LePE: a 3x3 depthwise conv of V *inside each stripe* (zero padding at the stripe border)

Half of the channels attend within vertical stripes of H x s_i columns, the other half within
horizontal stripes of s_i rows x W (the official ``idx`` 0 and 1).  Where the stripe width does not
divide the map, the official segmentation backbone pads the map symmetrically (floor half on top/left)
and crops after; done the same here.  The last stage attends globally (one branch, all heads).

Stages: a k7/s4/p2 conv + LN stem, then ``depths_i`` blocks, with a k3/s2/p1 conv + LN merge
between stages (channels doubling).  Two heads:

* ``task="segment"`` (default): the official segmentation backbone, a LayerNorm on each stage's
  output; ``num_classes > 0`` adds the book's all-MLP head (``hrvit_edu.nn.AllMLPHead``) and
  returns logits at input size; ``num_classes = 0`` returns the four stage maps.
* ``task="classify"``: the official ImageNet classifier, one final LayerNorm, mean pooling and a
  linear layer; ``create_model("cswin_t", num_classes=1000, in_chans=3, task="classify")`` has
  the published parameter count.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import AllMLPHead
from ..nn.checks import check_images, check_model_args
from ..registry import register_model


class LePEAttention(nn.Module):
    """Multi-head attention inside windows of ``win(h, w) -> (h_sp, w_sp)`` tokens, plus LePE.

    q, k, v: (B, h, w, c)  ->  (B, h, w, c).  ``orientation``: "v" (stripes of h x split), "h"
    (stripes of split x w) or None (the whole map: global attention, the last stage).
    """

    def __init__(self, dim: int, heads: int, orientation: str | None, split: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"CSWin: width {dim} is not divisible by {heads} heads")
        self.heads, self.orientation, self.split = heads, orientation, split
        self.scale = (dim // heads) ** -0.5
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)        # the official ``get_v``

    def window(self, h: int, w: int) -> tuple[int, int]:
        if self.orientation is None:
            return h, w
        return (h, self.split) if self.orientation == "v" else (self.split, w)

    def forward(self, q, k, v):
        b, h, w, c = q.shape
        hs, ws = self.window(h, w)
        ph, pw = -h % hs, -w % ws
        pad = (0, 0, pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)     # symmetric, as the official code
        hp, wp = h + ph, w + pw

        def windows(t):                                     # (B, hp, wp, c) -> (B*nw, hs*ws, c)
            t = F.pad(t, pad).reshape(b, hp // hs, hs, wp // ws, ws, c)
            return t.permute(0, 1, 3, 2, 4, 5).reshape(-1, hs * ws, c)

        q, k, v = windows(q), windows(k), windows(v)
        n_win = q.shape[0]
        lepe = self.lepe(v.transpose(1, 2).reshape(n_win, c, hs, ws)).flatten(2).transpose(1, 2)
        split = lambda t: t.reshape(n_win, hs * ws, self.heads, -1).transpose(1, 2)  # noqa: E731
        attn = torch.softmax(split(q) * self.scale @ split(k).transpose(-1, -2), dim=-1)
        out = (attn @ split(v)).transpose(1, 2).reshape(n_win, hs * ws, c) + lepe
        out = out.reshape(b, hp // hs, wp // ws, hs, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        return out[:, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]


class CSWinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, split: int, last_stage: bool, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        if last_stage:
            self.attns = nn.ModuleList([LePEAttention(dim, heads, None, split)])
        else:
            if dim % 2 or heads % 2:
                raise ValueError(f"CSWin: two branches need even width and heads, got {dim}, {heads}")
            self.attns = nn.ModuleList(LePEAttention(dim // 2, heads // 2, o, split) for o in ("v", "h"))
        hidden = int(dim * mlp_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:            # (B, H, W, C)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        parts = zip(*(t.chunk(len(self.attns), dim=-1) for t in (q, k, v)))
        x = x + self.proj(torch.cat([attn(*p) for attn, p in zip(self.attns, parts)], dim=-1))
        return x + self.mlp(self.norm2(x))


@dataclasses.dataclass(frozen=True)
class CSWinConfig:
    embed_dim: int = 64
    depths: tuple[int, ...] = (1, 2, 21, 1)
    heads: tuple[int, ...] = (2, 4, 8, 16)
    split: tuple[int, ...] = (1, 2, 7, 7)
    mlp_ratio: float = 4.0
    head_dim: int = 256              # E of the all-MLP head (segmentation form only)
    task: str = "segment"            # "segment" (official segmentation backbone) | "classify" (ImageNet)


class CSWin(nn.Module):
    """CSWin backbone / segmenter (``task="segment"``) or ImageNet classifier (``task="classify"``)."""

    def __init__(self, cfg: CSWinConfig, *, num_classes: int, in_chans: int):
        check_model_args("CSWin", num_classes, in_chans)
        if cfg.task not in ("segment", "classify"):
            raise ValueError(f"CSWin: task must be 'segment' or 'classify', got {cfg.task!r}")
        super().__init__()
        self.cfg, self.in_chans, self.num_classes = cfg, in_chans, num_classes
        dims = [cfg.embed_dim * 2 ** i for i in range(len(cfg.depths))]
        self.dims = dims
        self.embeds, self.stages = nn.ModuleList(), nn.ModuleList()
        cin = in_chans
        for i, (d, n, h, s) in enumerate(zip(dims, cfg.depths, cfg.heads, cfg.split)):
            k, st, p = (7, 4, 2) if i == 0 else (3, 2, 1)
            self.embeds.append(nn.ModuleDict({"proj": nn.Conv2d(cin, d, k, stride=st, padding=p),
                                              "norm": nn.LayerNorm(d)}))
            last = i == len(dims) - 1
            self.stages.append(nn.ModuleList(CSWinBlock(d, h, s, last_stage=last, mlp_ratio=cfg.mlp_ratio)
                                             for _ in range(n)))
            cin = d
        if cfg.task == "segment":
            self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
            self.head = AllMLPHead(dims, cfg.head_dim, num_classes) if num_classes else None
        else:
            self.norm = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], num_classes) if num_classes else None

    def _stages(self, x: torch.Tensor):
        for emb, blocks in zip(self.embeds, self.stages):
            x = emb["norm"](emb["proj"](x).permute(0, 2, 3, 1))                 # (B, H, W, C)
            for blk in blocks:
                x = blk(x)
            yield x
            x = x.permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage maps (B, C_i, H/2^(i+2), W/2^(i+2)) of the segmentation backbone."""
        check_images("CSWin", x, self.in_chans)
        if self.cfg.task != "segment":
            raise ValueError("CSWin: forward_features is the segmentation backbone (task='segment')")
        return [norm(t).permute(0, 3, 1, 2) for norm, t in zip(self.norms, self._stages(x))]

    def forward(self, x: torch.Tensor):
        if self.cfg.task == "classify":
            check_images("CSWin", x, self.in_chans)
            *_, last = self._stages(x)
            pooled = self.norm(last).mean(dim=(1, 2))
            return pooled if self.head is None else self.head(pooled)
        feats = self.forward_features(x)
        if self.head is None:
            return feats
        return self.head.logits_at(feats, x.shape[-2:])


VARIANTS = {
    "t": CSWinConfig(),
    "s": CSWinConfig(depths=(2, 4, 32, 2)),
    "b": CSWinConfig(embed_dim=96, depths=(2, 4, 32, 2), heads=(4, 8, 16, 32)),
}
# CSWin README, ImageNet-1K at 224 x 224: parameters and "FLOPs" (multiply-adds) of the classifier.
PUBLISHED_PARAMS = {"t": 23e6, "s": 35e6, "b": 78e6}
PUBLISHED_GMACS_224 = {"t": 4.3, "s": 6.9, "b": 15.0}
# The exact parameter counts of the official classes (microsoft/CSWin-Transformer, models/cswin.py,
# CSWin_64_12211_tiny_224 etc., 1000 classes), counted by instantiating them: the README rounds them.
OFFICIAL_CODE_PARAMS = {"t": 22_320_552, "s": 34_643_304, "b": 77_382_184}


def _factory(variant: str):
    def make(num_classes=11, in_chans=1, **overrides):
        return CSWin(dataclasses.replace(VARIANTS[variant], **overrides), num_classes=num_classes, in_chans=in_chans)
    make.__doc__ = f"CSWin-{variant.upper()}: the second comparator of chapter 01, counted, not trained"
    return make


for _v in VARIANTS:
    register_model(f"cswin_{_v}", paper="cswin")(_factory(_v))
