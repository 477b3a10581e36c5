"""Hire-MLP (Guo et al., CVPR 2022): vision MLP via hierarchical rearrangement.

Chapter 04.  Everything is a 1x1 convolution on (B, C, H, W) maps; the spatial mixing comes from
*rearranging* tokens, so the model runs at any input size and its cost is linear in H*W.

**Inner-region rearrangement** (height branch; the width branch swaps H and W).  Cut the rows into
regions of p, stack a region's p rows along channels and mix them with a bottleneck MLP:

    Z[b, c*p + i, g, w] = X~[b, c, g*p + i, w]          (B, C*p, H'/p, W),  H' = ceil(H/p)*p   (4.1)
    Z' = W_2 ReLU(BN(W_1 Z)) + b_2                      W_1: C*p -> C/2 (no bias), W_2: C/2 -> C*p
    then the inverse rearrangement, cropped to the first H rows.

A linear map on the stacked channels is a convolution with a (p x 1) kernel and stride (p, 1): the
two views of one operator (chapter 04 checks it numerically).

**Cross-region rearrangement.**  Before the inner-region op the map is rolled by +s along H (row r
moves to r + s mod H), afterwards rolled back by -s, so regions straddle the previous block's
region borders.  Padding to H' is circular *after* the roll, hence

    X~[b, c, r, w] = X[b, c, (r - s) mod H, w]    for every r < H'                           (4.2)

which is what the fused kernel (``hrvit_edu.kernels.hire``) computes inside its loads.  Block k of
a stage shifts by s_k = (k mod step_stride) * step_dilation.

**Hire module.**  X_h, X_w (the two branches above), X_c = W_c X + b_c (a channel FC), fused by the
official code's split-attention re-weighting (ViP / CycleMLP style; ``fusion="reweight"``):

    a = GAP(X_h + X_w + X_c);  alpha = softmax_k( W_r2 GELU(W_r1 a) )  per channel, k in {h, w, c}
    Hire(X) = W_p (alpha_h * X_h + alpha_w * X_w + alpha_c * X_c) + b_p                          (4.3)

``fusion="sum"`` is the seed article's description (the paper's text: unverified),
W_p (X_h + X_w + X_c) + b_p.

**Block** (BatchNorm throughout): X <- X + Hire(BN(X)); X <- X + MLP(BN(X)), MLP ratio 4.
**Network**: conv k7/s4/p2 + BN + ReLU stem; four stages; conv k3/s2/p1 + BN + ReLU between
stages.  ``task="classify"``: BN, global average pool, linear (the official ImageNet model);
``task="segment"``: each stage's output through its own BN (the official ``extra_norm``), then the
book's all-MLP head (``num_classes > 0``) or the four maps (``num_classes = 0``).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import prefer_kernel
from ..kernels.hire import region_linear
from ..nn import AllMLPHead, DropPath
from ..nn.checks import check_images, check_model_args
from ..registry import register_variants


# ============================================================================ rearrangements
def region_partition(x: torch.Tensor, p: int, s: int = 0, axis: str = "h") -> torch.Tensor:
    """Eqs. (4.1)-(4.2): roll by +s, pad circularly to a multiple of p, stack regions on channels.

    x (B, C, H, W) -> (B, C*p, ceil(H/p), W) for ``axis="h"``, (B, C*p, H, ceil(W/p)) for "w";
    channel index c*p + i, i the offset inside the region (the official ordering).
    """
    if x.ndim != 4:
        raise ValueError(f"region_partition expects (B, C, H, W), got shape {tuple(x.shape)}")
    if axis not in ("h", "w"):
        raise ValueError(f"axis must be 'h' or 'w', got {axis!r}")
    if p < 1:
        raise ValueError(f"region size p must be >= 1, got {p}")
    b, c, h, w = x.shape
    if axis == "w":
        return region_partition(x.transpose(2, 3), p, s, "h").transpose(2, 3)
    hp = -(-h // p) * p
    if s or hp != h:          # eq. (4.2) as one gather; also right when the padding exceeds H
        x = x.index_select(2, (torch.arange(hp, device=x.device) - s) % h)
    return x.reshape(b, c, -1, p, w).transpose(2, 3).reshape(b, c * p, -1, w)


def region_restore(z: torch.Tensor, p: int, size: int, s: int = 0, axis: str = "h") -> torch.Tensor:
    """Inverse of :func:`region_partition`: unstack, crop to ``size`` rows (columns), roll by -s."""
    if axis == "w":
        return region_restore(z.transpose(2, 3), p, size, s, "h").transpose(2, 3)
    b, cp, g, w = z.shape
    x = z.reshape(b, cp // p, p, g, w).transpose(2, 3).reshape(b, cp // p, g * p, w)[:, :, :size]
    return torch.roll(x, -s, dims=2) if s else x


# ============================================================================ modules
class RegionMLP(nn.Module):
    """One branch: partition (roll, pad, stack), W_2 ReLU(BN(W_1 .)) + b_2, restore.

    The first step (partition + W_1, eq. 4.4) can run as one fused op,
    ``hrvit_edu.kernels.hire.region_linear``; both paths compute the same function.
    ``use_kernel``: None (default) follows :func:`hrvit_edu.kernels.prefer_kernel` (the fused op
    natively on CUDA, eager PyTorch elsewhere); True/False force it.
    """

    def __init__(self, dim: int, p: int, s: int, axis: str, use_kernel: bool | None = None):
        super().__init__()
        self.p, self.s, self.axis, self.use_kernel = p, s, axis, use_kernel
        self.fc1 = nn.Conv2d(dim * p, dim // 2, 1, bias=False)
        self.norm = nn.BatchNorm2d(dim // 2)
        self.fc2 = nn.Conv2d(dim // 2, dim * p, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2] if self.axis == "h" else x.shape[3]
        if self.use_kernel if self.use_kernel is not None else prefer_kernel(x):
            z = region_linear(x, self.fc1.weight.flatten(1), self.p, self.s, self.axis)
        else:
            z = self.fc1(region_partition(x, self.p, self.s, self.axis))
        z = self.fc2(F.relu(self.norm(z)))
        return region_restore(z, self.p, size, self.s, self.axis)

    def extra_repr(self) -> str:
        return f"p={self.p}, s={self.s}, axis={self.axis!r}"


class HireModule(nn.Module):
    """Eq. (4.3): height branch, width branch, channel FC, fused by re-weighting (or a sum)."""

    def __init__(self, dim: int, p: int, s: int, fusion: str = "reweight"):
        super().__init__()
        if fusion not in ("reweight", "sum"):
            raise ValueError(f"fusion must be 'reweight' (official code) or 'sum' (paper), got {fusion!r}")
        if dim % 2:
            raise ValueError(f"Hire-MLP needs an even width (hidden C/2), got {dim}")
        self.fusion = fusion
        self.branch_h, self.branch_w = RegionMLP(dim, p, s, "h"), RegionMLP(dim, p, s, "w")
        self.fc_c = nn.Conv2d(dim, dim, 1)
        if fusion == "reweight":
            self.reweight = nn.Sequential(nn.Conv2d(dim, dim // 4, 1), nn.GELU(), nn.Conv2d(dim // 4, 3 * dim, 1))
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xh, xw, xc = self.branch_h(x), self.branch_w(x), self.fc_c(x)
        if self.fusion == "sum":
            return self.proj(xh + xw + xc)
        b, c = x.shape[:2]
        a = self.reweight((xh + xw + xc).mean(dim=(2, 3), keepdim=True))       # (B, 3C, 1, 1)
        alpha = a.reshape(b, c, 3).softmax(dim=-1)                              # index c*3 + k
        mix = sum(alpha[:, :, k, None, None] * t for k, t in enumerate((xh, xw, xc)))
        return self.proj(mix)


class HireBlock(nn.Module):
    def __init__(self, dim: int, p: int, s: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 fusion: str = "reweight"):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.hire = nn.BatchNorm2d(dim), HireModule(dim, p, s, fusion)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.hire(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokenMixingMLP(nn.Module):
    """MLP-Mixer's token-mixing MLP, the design Hire-MLP argues against (chapter 04, claim (b)).

    Tokens of a fixed H x W map are mixed by weights over positions: Y = X W_2^T GELU(X W_1^T)
    applied along the N = H W axis, so W_1 is (hidden, N) and the layer only accepts the size it
    was built for; its cost is O(N * hidden) per channel, quadratic in N when hidden ~ N.
    """

    def __init__(self, size: tuple[int, int], hidden: int):
        super().__init__()
        self.size = tuple(size)
        n = self.size[0] * self.size[1]
        self.fc1, self.fc2 = nn.Linear(n, hidden), nn.Linear(hidden, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:            # (B, C, H, W)
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"TokenMixingMLP was built for {self.size[0]}x{self.size[1]} maps (its weights are "
                             f"indexed by position) and cannot mix a {x.shape[-2]}x{x.shape[-1]} map")
        return self.fc2(F.gelu(self.fc1(x.flatten(2)))).reshape(x.shape)


def shift_schedule(depth: int, step_stride: int, step_dilation: int) -> list[int]:
    """s_k = (k mod step_stride) * step_dilation for the blocks k = 0..depth-1 of a stage."""
    return [(k % step_stride) * step_dilation for k in range(depth)]


@dataclasses.dataclass(frozen=True)
class HireMLPConfig:
    dims: tuple[int, ...] = (64, 128, 320, 512)
    depths: tuple[int, ...] = (2, 2, 4, 2)
    region: tuple[int, ...] = (4, 3, 3, 2)          # p per stage (the code's ``pixel``)
    step_stride: tuple[int, ...] = (2, 2, 3, 2)
    step_dilation: tuple[int, ...] = (2, 2, 1, 1)   # s = 0 everywhere: ``step_dilation=(0, 0, 0, 0)``
    mlp_ratio: float = 4.0
    fusion: str = "reweight"                        # "reweight" (code) | "sum" (paper)
    drop_path: float = 0.0
    stem_stride: int = 4                            # k7/s4/p2 stem (published)
    head_dim: int = 256                             # E of the all-MLP head (segmentation form)
    task: str = "segment"                           # "segment" | "classify" (ImageNet)
    init: str = "official"                          # "official" (trunc-normal 0.02) | "torch" (defaults)


class HireMLP(nn.Module):
    """Hire-MLP segmenter / backbone (``task="segment"``) or ImageNet classifier (``"classify"``)."""

    def __init__(self, cfg: HireMLPConfig, *, num_classes: int, in_chans: int):
        check_model_args("HireMLP", num_classes, in_chans)
        if cfg.task not in ("segment", "classify"):
            raise ValueError(f"HireMLP: task must be 'segment' or 'classify', got {cfg.task!r}")
        if cfg.init not in ("official", "torch"):
            raise ValueError(f"HireMLP: init must be 'official' or 'torch', got {cfg.init!r}")
        n = len(cfg.dims)
        if not all(len(t) == n for t in (cfg.depths, cfg.region, cfg.step_stride, cfg.step_dilation)):
            raise ValueError("HireMLP: dims, depths, region, step_stride and step_dilation need one entry per stage")
        super().__init__()
        self.cfg, self.in_chans, self.num_classes = cfg, in_chans, num_classes
        k, pad = (7, 2) if cfg.stem_stride == 4 else (3, 1)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, cfg.dims[0], k, stride=cfg.stem_stride, padding=pad),
                                  nn.BatchNorm2d(cfg.dims[0]), nn.ReLU())
        total, idx = sum(cfg.depths), 0
        self.downs, self.stages = nn.ModuleList(), nn.ModuleList()
        for i, (d, depth) in enumerate(zip(cfg.dims, cfg.depths)):
            if i:
                self.downs.append(nn.Sequential(nn.Conv2d(cfg.dims[i - 1], d, 3, stride=2, padding=1),
                                                nn.BatchNorm2d(d), nn.ReLU()))
            blocks = []
            for s in shift_schedule(depth, cfg.step_stride[i], cfg.step_dilation[i]):
                rate = cfg.drop_path * idx / max(total - 1, 1)
                blocks.append(HireBlock(d, cfg.region[i], s, cfg.mlp_ratio, rate, cfg.fusion))
                idx += 1
            self.stages.append(nn.Sequential(*blocks))
        if cfg.task == "segment":
            self.norms = nn.ModuleList(nn.BatchNorm2d(d) for d in cfg.dims)
        else:
            self.norm = nn.BatchNorm2d(cfg.dims[-1])
            self.head = nn.Linear(cfg.dims[-1], num_classes) if num_classes else None
        if cfg.init == "official":
            self.apply(_init_weights)       # the backbone (and the ImageNet classifier)
        if cfg.task == "segment":           # the book's segmentation head keeps its own init
            self.head = AllMLPHead(cfg.dims, cfg.head_dim, num_classes) if num_classes else None

    def use_kernels(self, on: bool | None = True) -> "HireMLP":
        """Force (True), forbid (False) or leave to ``prefer_kernel`` (None) the fused op in every
        branch; the function computed is the same."""
        for m in self.modules():
            if isinstance(m, RegionMLP):
                m.use_kernel = on
        return self

    def _stages(self, x: torch.Tensor):
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i:
                x = self.downs[i - 1](x)
            x = stage(x)
            yield x

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_images("HireMLP", x, self.in_chans)
        if self.cfg.task != "segment":
            raise ValueError("HireMLP: forward_features is the segmentation backbone (task='segment')")
        return [norm(t) for norm, t in zip(self.norms, self._stages(x))]

    def forward(self, x: torch.Tensor):
        if self.cfg.task == "classify":
            check_images("HireMLP", x, self.in_chans)
            *_, last = self._stages(x)
            pooled = self.norm(last).mean(dim=(2, 3))
            return pooled if self.head is None else self.head(pooled)
        feats = self.forward_features(x)
        if self.head is None:
            return feats
        return self.head.logits_at(feats, x.shape[-2:])


def _init_weights(m: nn.Module) -> None:
    """The official init (``cls_init_weights``): every Conv2d and Linear weight trunc-normal with
    std 0.02 (cut at +-2 absolute, as timm's ``trunc_normal_``), biases 0, BatchNorm (1, 0).
    With ``init="torch"`` the model keeps PyTorch's defaults (Kaiming-uniform with a = sqrt(5))."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


VARIANTS = {
    "tiny": HireMLPConfig(),
    "small": HireMLPConfig(depths=(3, 4, 10, 3)),
    "base": HireMLPConfig(depths=(4, 6, 24, 3)),
    "large": HireMLPConfig(dims=(96, 192, 384, 768), depths=(4, 6, 24, 3)),
    # Textbook size for DigitScenes (64 x 64) on 2 CPU cores: the published regions and shift
    # schedule, narrow stages with tiny's depth proportions (2, 2, 4, 2), ~0.70 M parameters.  Two
    # departures, both trained as arms in chapter 04: the stem stops at stride 2 (a k3/s2 conv;
    # stage maps 32/16/8/4), and the weights start from PyTorch's default init: at these narrow
    # widths the official N(0, 0.02^2) starts every block close to the identity (chapter 04, §6).
    "textbook": HireMLPConfig(dims=(16, 32, 64, 96), depths=(2, 2, 4, 2), stem_stride=2, head_dim=32, init="torch"),
}
# Single-change ablations of the textbook variant (chapter 04, "claims re-tested"): arm -> overrides.
ABLATIONS = {
    "reference": {},
    "no cross-region shift (s = 0)": {"step_dilation": (0, 0, 0, 0)},
    "sum of branches (paper)": {"fusion": "sum"},
    "stem to stride 4": {"stem_stride": 4},
    "official init (trunc-normal 0.02)": {"init": "official"},
    "two blocks per stage (first edition)": {"depths": (2, 2, 2, 2)},
}
ABLATION_SEEDS = (0, 1, 2)
ABLATION_LRS = (1.5e-3, 6e-3)       # around the engine's 3e-3, seed 0 only (chapter 04's diagnosis)


def ablation_budget(budget):
    """Chapter 04 ablates at the *full* main budget (final evaluation only): at half of it the
    first textbook Hire-MLP (two blocks per stage) was still leaving the all-background solution
    (0.28 +- 0.12 test mIoU over 3 seeds at 400 steps, measured), so no gap could resolve."""
    return budget.replace(eval_every=0)


def ablation_sweep() -> list[tuple[list, list[int]]]:
    """Chapter 04's sweep as (arms, seeds) groups: every ``ABLATIONS`` arm with each seed, then the
    learning rates of ``ABLATION_LRS`` with seed 0."""
    from ..train.ablation import sweep_groups  # the training package is needed only here, not at import

    return sweep_groups(ABLATIONS, ABLATION_SEEDS, ABLATION_LRS)


# Official README (ImageNet-1K classifiers, 224 x 224): parameters and "FLOPs" (multiply-adds).
PUBLISHED_PARAMS = {"tiny": 18.0e6, "small": 33.1e6, "base": 58.2e6, "large": 95.7e6}
PUBLISHED_GMACS_224 = {"tiny": 2.14, "small": 4.23, "base": 8.11, "large": 13.42}


register_variants("hire_mlp", paper="hire_mlp", model_cls=HireMLP, variants=VARIANTS, title="Hire-MLP")
