"""HRViT (Gu et al., CVPR 2022): a multi-branch high-resolution vision transformer.

Topology.  A conv stem takes the image to stride 4; six *modules* follow, grouped into four
stages; stage n runs n parallel branches at strides 4, 8, 16, 32.  Each module

    1. fuses the incoming branches across resolutions (and may add a coarser branch),
    2. re-embeds every branch (pointwise -> depthwise 3x3 -> LayerNorm),
    3. runs a stack of HRViT blocks per branch, independently,
    4. closes each branch with a LayerNorm.

HRViT block on tokens X (B, N, C):

    X <- X + DropPath( Attn(LN1(X)) + DES(X) )                                     (eq. 1.10)
    X <- X + DropPath( MixCFN(LN2(X)) )                                            (eq. 1.10)

Defaults follow the official code wherever it differs from the paper (see ``HRViTConfig``:
``des_act`` and ``attn_bn_init`` switch to the paper's form).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import prefer_kernel
from ..kernels.des import des as des_fused
from ..kernels.window_attention import window_attention, window_attention_reference
from ..nn import AllMLPHead, DropPath
from ..nn.checks import check_images, check_model_args
from ..registry import register_model


# ============================================================================ DES
def des_factors(channels: int) -> tuple[int, int]:
    """(P, K) of the Kronecker shortcut: e = floor(log2 C), P = 2^ceil(e/2), K = C / P."""
    if channels < 2:
        raise ValueError(f"DES needs at least 2 channels, got {channels}")
    e = int(math.floor(math.log2(channels)))
    p = 2 ** (e - e // 2)
    if channels % p:
        raise ValueError(f"DES: C={channels} is not divisible by its factor P={p} "
                         f"(P = 2^ceil(floor(log2 C)/2)); pick a width such as {p * (channels // p)}")
    return p, channels // p


def _activation(name: str) -> nn.Module:
    acts = {"gelu": nn.GELU, "hardswish": nn.Hardswish, "identity": nn.Identity}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(acts)}")
    return acts[name]()


class DES(nn.Module):
    """Diversity-enhanced shortcut: a C x C channel mixing factored as a Kronecker product.

    Fold the token x in R^C into X_m in R^{K x P} (X_m[k, p] = x[kP + p]); then

        U = A act(X_m B^T + 1 b_B^T) + b_A 1^T,     out[kP + p] = U[k, p]           (eq. 1.3)

    Without the activation and biases, out = (A kron B) x, because (A kron B) vec_r(X_m) =
    vec_r(A X_m B^T) for row-major vec_r.  Parameters P^2 + P + K^2 + K instead of C^2 + C.
    ``act``: 'gelu' (official code, default) or 'hardswish' (the paper).
    ``use_kernel``: None (default) follows :func:`hrvit_edu.kernels.prefer_kernel`: the fused
    Triton op (``hrvit_edu::des``) natively on CUDA, eager torch on CPU (the interpreter is ~1000x
    slower), nothing fused under ``use_backend("reference")``; True/False force it on/off.
    """

    def __init__(self, channels: int, act: str = "gelu", use_kernel: bool | None = None):
        super().__init__()
        self.channels, self.act_name, self.use_kernel = channels, act, use_kernel
        self.p, self.k = des_factors(channels)
        self.right = nn.Linear(self.p, self.p)     # B, acts along P
        self.left = nn.Linear(self.k, self.k)      # A, acts along K
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.channels:
            raise ValueError(f"DES expects {self.channels} channels last, got shape {tuple(x.shape)}")
        fused = self.use_kernel if self.use_kernel is not None else prefer_kernel(x)
        if fused and self.act_name in ("gelu", "identity"):
            out = des_fused(x.reshape(-1, self.channels), self.left.weight, self.left.bias,
                            self.right.weight, self.right.bias, self.act_name)
            return out.reshape(x.shape)
        xm = x.reshape(*x.shape[:-1], self.k, self.p)
        y = self.act(self.right(xm))                                   # (..., K, P)
        u = self.left(y.transpose(-1, -2)).transpose(-1, -2)            # A along K
        return u.reshape(x.shape)


# ============================================================================ attention
def stripe_partition(x: torch.Tensor, s: int, orientation: str):
    """Cut a map (B, H, W, c) into zero-padded stripes.

    'h': stripes of s rows x W, tokens row-major         -> (B * ceil(H/s), s*W, c)
    'v': stripes of H x s columns, tokens column-major   -> (B * ceil(W/s), s*H, c)
    Real tokens come first in every window, so padding is a suffix; returns (windows, valid)
    with ``valid`` (windows,) the number of real tokens of each window.
    """
    b, h, w, c = x.shape
    if orientation == "h":
        hp = -(-h // s) * s
        x = F.pad(x, (0, 0, 0, 0, 0, hp - h))
        win = x.reshape(b, hp // s, s * w, c).reshape(-1, s * w, c)
        n_real = torch.full((hp // s,), s * w)
        n_real[-1] = (s - (hp - h)) * w
    elif orientation == "v":
        wp = -(-w // s) * s
        x = F.pad(x, (0, 0, 0, wp - w))
        win = x.reshape(b, h, wp // s, s, c).permute(0, 2, 3, 1, 4).reshape(-1, s * h, c)
        n_real = torch.full((wp // s,), s * h)
        n_real[-1] = (s - (wp - w)) * h
    else:
        raise ValueError(f"orientation must be 'h' or 'v', got {orientation!r}")
    return win, n_real.repeat(b).to(x.device)


def stripe_merge(win: torch.Tensor, b: int, h: int, w: int, s: int, orientation: str) -> torch.Tensor:
    """Inverse of :func:`stripe_partition`, cropping the padding: -> (B, H, W, c)."""
    c = win.shape[-1]
    if orientation == "h":
        hp = -(-h // s) * s
        return win.reshape(b, hp, w, c)[:, :h]
    wp = -(-w // s) * s
    return win.reshape(b, wp // s, s, h, c).permute(0, 3, 1, 2, 4).reshape(b, h, wp, c)[:, :, :w]


def head_split(channels: int, dim_head: int) -> tuple[int, int]:
    """(heads per half, head dim) of the cross-shaped attention; one head if C/2 < dim_head."""
    half = channels // 2
    if channels % 2:
        raise ValueError(f"HRViTAttn needs an even width (two halves), got {channels}")
    if half < dim_head:
        return 1, half
    if half % dim_head:
        raise ValueError(f"half width {half} is not a multiple of dim_head {dim_head}")
    return half // dim_head, dim_head


class HRViTAttn(nn.Module):
    """Cross-shaped window attention with shared key/value and a parallel depthwise path.

        [Q | V] = X W_qv + b,  K = V                                               (eq. 1.4)
        Y^h = StripeAttn_h(Q[:, :C/2], V[:, :C/2]),  Y^v = StripeAttn_v(Q[:, C/2:], V[:, C/2:])
        P = DW3x3(Hardswish(V))                                                    (eq. 1.7)
        Z = BN(W_o Hardswish([Y^h, Y^v] + P) + b_o)                                 (eq. 1.7)

    ``bn_init``: 'zero' (official code: gamma = beta = 0, so Z = 0 at initialisation and the
    attention branch starts switched off) or 'identity' (gamma = 1, beta = 0, as the paper says).
    ``mask_value``: added to padded keys' logits (-100 in the code; ``float('-inf')`` is exact).
    ``use_kernel``: None follows :func:`hrvit_edu.kernels.prefer_kernel` (the fused op natively on
    CUDA, eager torch on CPU and under ``use_backend("reference")``); True/False force it.
    ``kv``: 'shared' (K = V, the paper and code) or 'separate' (an extra key projection: the
    ablation that measures what sharing saves).
    """

    def __init__(self, channels: int, window: int, dim_head: int = 32, bn_init: str = "zero",
                 mask_value: float = -100.0, use_kernel: bool | None = None, kv: str = "shared"):
        super().__init__()
        if kv not in ("shared", "separate"):
            raise ValueError(f"kv must be 'shared' or 'separate', got {kv!r}")
        self.channels, self.window, self.mask_value = channels, window, mask_value
        self.use_kernel = use_kernel
        self.to_k = nn.Linear(channels, channels) if kv == "separate" else None
        self.heads, self.dim_head = head_split(channels, dim_head)
        self.scale = self.dim_head ** -0.5
        self.to_qv = nn.Linear(channels, 2 * channels)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.proj = nn.Linear(channels, channels)
        self.bn = nn.BatchNorm1d(channels)
        if bn_init == "zero":
            nn.init.zeros_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)
        elif bn_init != "identity":
            raise ValueError(f"bn_init must be 'zero' (code) or 'identity' (paper), got {bn_init!r}")

    def _stripes(self, q, k, v, b, h, w, orientation):
        """q, v (and k, or None when K = V) (B, H, W, C/2) -> (B, H, W, C/2) for one orientation."""
        qw, valid = stripe_partition(q, self.window, orientation)
        vw, _ = stripe_partition(v, self.window, orientation)
        kw = vw if k is None else stripe_partition(k, self.window, orientation)[0]
        g, n, _ = qw.shape
        split = lambda t: t.reshape(g, n, self.heads, self.dim_head).transpose(1, 2).reshape(-1, n, self.dim_head)
        fused = self.use_kernel if self.use_kernel is not None else prefer_kernel(q)
        attend = window_attention if fused else window_attention_reference
        vs = split(vw)
        ks = vs if kw is vw else split(kw)               # shared key/value: K = V
        out = attend(split(qw), ks, vs, valid.repeat_interleave(self.heads), self.scale, self.mask_value)
        out = out.reshape(g, self.heads, n, self.dim_head).transpose(1, 2).reshape(g, n, -1)
        return stripe_merge(out, b, h, w, self.window, orientation)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = hw
        if c != self.channels or n != h * w:
            raise ValueError(f"HRViTAttn expects (B, {h}*{w}, {self.channels}), got {tuple(x.shape)}")
        q, v = self.to_qv(x).chunk(2, dim=-1)
        qm, vm = q.reshape(b, h, w, c), v.reshape(b, h, w, c)
        km = None if self.to_k is None else self.to_k(x).reshape(b, h, w, c)
        halves = (slice(0, c // 2), slice(c // 2, c))      # first half: rows, second: columns
        y = torch.cat([self._stripes(qm[..., sl], None if km is None else km[..., sl], vm[..., sl], b, h, w, o)
                       for sl, o in zip(halves, "hv")], dim=-1)
        p = self.dw(F.hardswish(vm.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        z = self.proj(F.hardswish(y + p).reshape(b, n, c))
        return self.bn(z.transpose(1, 2)).transpose(1, 2)


# ============================================================================ FFN, block
class MixCFN(nn.Module):
    """Mixed-scale conv FFN: H = X W1 + b1 (no activation); DW3x3 on the first half of the
    hidden channels, DW5x5 on the rest; out = W2 GELU([..]) + b2.                   (eq. 1.8)"""

    def __init__(self, channels: int, mlp_ratio: float):
        super().__init__()
        d = int(mlp_ratio * channels)
        self.d1 = d // 2
        self.fc1 = nn.Linear(channels, d)
        self.dw3 = nn.Conv2d(self.d1, self.d1, 3, padding=1, groups=self.d1)
        self.dw5 = nn.Conv2d(d - self.d1, d - self.d1, 5, padding=2, groups=d - self.d1)
        self.fc2 = nn.Linear(d, channels)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, _ = x.shape
        hmap = self.fc1(x).transpose(1, 2).reshape(b, -1, *hw)
        m = torch.cat([self.dw3(hmap[:, :self.d1]), self.dw5(hmap[:, self.d1:])], dim=1)
        return self.fc2(F.gelu(m).flatten(2).transpose(1, 2))


class _Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


class HRViTBlock(nn.Module):
    """eq. (1.10): DES sees the un-normalised input; one DropPath covers Attn + DES."""

    def __init__(self, channels: int, window: int, dim_head: int, mlp_ratio: float,
                 drop_path: float = 0.0, des_act: str = "gelu", attn_bn_init: str = "zero",
                 mask_value: float = -100.0, use_kernel: bool | None = None, des: str = "kron",
                 kv: str = "shared"):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = HRViTAttn(channels, window, dim_head, attn_bn_init, mask_value, use_kernel, kv)
        if des == "kron":
            self.des = DES(channels, des_act, use_kernel)
        elif des == "dense":                 # ablation: the full C x C projection DES factorises
            self.des = nn.Linear(channels, channels)
        elif des == "none":                  # ablation: no diversity shortcut at all
            self.des = _Zero()
        else:
            raise ValueError(f"des must be 'kron', 'dense' or 'none', got {des!r}")
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = MixCFN(channels, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw) + self.des(x))
        return x + self.drop_path(self.ffn(self.norm2(x), hw))


# ============================================================================ fusion, module
class CrossResolutionFusion(nn.Module):
    """y_i = GELU( sum_j path_{j->i}(x_j) ).                                       (eq. 1.9)

    j = i: identity.  j < i (f = 2^(i-j)): DW (f+1)x(f+1) stride f (no bias) -> BN -> PW -> BN.
    j > i: PW -> BN at the coarse resolution, then nearest upsampling by f.
    Output widths: the input width for an existing branch, ``new_channels`` for an added one.
    """

    def __init__(self, in_channels: list[int], new_channels: int | None = None):
        super().__init__()
        self.out_channels = list(in_channels) + ([new_channels] if new_channels else [])
        self.paths = nn.ModuleList()
        for i, co in enumerate(self.out_channels):
            row = nn.ModuleList()
            for j, ci in enumerate(in_channels):
                if j == i:
                    row.append(nn.Identity())
                elif j < i:
                    f = 2 ** (i - j)
                    row.append(nn.Sequential(
                        nn.Conv2d(ci, ci, f + 1, stride=f, padding=f // 2, groups=ci, bias=False),
                        nn.BatchNorm2d(ci), nn.Conv2d(ci, co, 1), nn.BatchNorm2d(co)))
                else:
                    row.append(nn.Sequential(nn.Conv2d(ci, co, 1), nn.BatchNorm2d(co),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
            self.paths.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [F.gelu(sum(p(x) for p, x in zip(row, xs))) for row in self.paths]


class PatchEmbed(nn.Module):
    """Efficient patch embedding: PW (C_in -> C) -> DW 3x3 -> tokens -> LN."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pw = nn.Conv2d(cin, cout, 1)
        self.dw = nn.Conv2d(cout, cout, 3, padding=1, groups=cout)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dw(self.pw(x)).flatten(2).transpose(1, 2))


class HRViTModule(nn.Module):
    def __init__(self, in_channels: list[int], channels: list[int], blocks: tuple[int, ...],
                 cfg: "HRViTConfig", drop_rates: list[float]):
        super().__init__()
        k_out = len(blocks)
        self.fusion = CrossResolutionFusion(in_channels, channels[k_out - 1] if k_out > len(in_channels) else None)
        self.embed = nn.ModuleList(PatchEmbed(ci, channels[i]) for i, ci in enumerate(self.fusion.out_channels))
        self.branches = nn.ModuleList(
            nn.ModuleList(HRViTBlock(channels[i], cfg.window[i], cfg.dim_head, cfg.mlp_ratio[i], drop_rates[j],
                                     cfg.des_act, cfg.attn_bn_init, cfg.mask_value, cfg.use_kernel,
                                     cfg.des, cfg.kv) for j in range(n))
            for i, n in enumerate(blocks))
        self.norms = nn.ModuleList(nn.LayerNorm(channels[i]) for i in range(k_out))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for i, x in enumerate(self.fusion(xs)):
            b, _, h, w = x.shape
            t = self.embed[i](x)
            for blk in self.branches[i]:
                t = blk(t, (h, w))
            outs.append(self.norms[i](t).transpose(1, 2).reshape(b, -1, h, w))
        return outs


# ============================================================================ model
@dataclasses.dataclass(frozen=True)
class HRViTConfig:
    channels: tuple[int, ...] = (32, 64, 128, 256)
    stem_channels: int = 64
    dim_head: int = 32
    window: tuple[int, ...] = (1, 2, 7, 7)
    mlp_ratio: tuple[float, ...] = (4, 4, 4, 4)
    blocks: tuple[tuple[int, ...], ...] = ((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 2), (1, 1, 2, 2))
    drop_path: float = 0.0
    head_dim: int = 256                  # E of the all-MLP head
    des_act: str = "gelu"                # paper: "hardswish"
    attn_bn_init: str = "zero"           # paper: "identity"
    mask_value: float = -100.0           # code; float("-inf") is exact masking
    use_kernel: bool | None = None       # None: kernels.prefer_kernel (fused natively on CUDA)
    des: str = "kron"                    # ablations: "dense" (C x C), "none"
    kv: str = "shared"                   # ablation: "separate" key projection
    head_from: int = 0                   # ablation: 1 = the head ignores the finest branch
    stem_stride: int = 4                 # 4 (paper, code); 2 = the textbook's 64 px adaptation


class HRViT(nn.Module):
    """Backbone (``num_classes=0``: returns the four branch maps) or segmenter (logits at the
    input resolution).  Inputs whose sides are not multiples of 32 are zero-padded on the
    bottom/right and the output is cropped back."""

    def __init__(self, cfg: HRViTConfig, *, num_classes: int, in_chans: int):
        # no defaults: the registry builds DigitScenes models (11 classes, 1 channel), the
        # official counts are for a 3-channel backbone (num_classes=0): always say which
        check_model_args("HRViT", num_classes, in_chans)
        super().__init__()
        self.cfg, self.in_chans, self.num_classes = cfg, in_chans, num_classes
        cs = cfg.stem_channels
        if cfg.stem_stride not in (2, 4):
            raise ValueError(f"stem_stride must be 4 (published) or 2 (small images), got {cfg.stem_stride}")
        self.stem = nn.Sequential(nn.Conv2d(in_chans, cs // 2, 3, 2, 1), nn.BatchNorm2d(cs // 2), nn.ReLU(),
                                  nn.Conv2d(cs // 2, cs, 3, cfg.stem_stride // 2, 1), nn.BatchNorm2d(cs), nn.ReLU())
        total = sum(max(b) for b in cfg.blocks)
        rates = torch.linspace(0, cfg.drop_path, total).tolist()
        self.stages = nn.ModuleList()
        in_ch, r = [cs], 0
        for blocks in cfg.blocks:
            self.stages.append(HRViTModule(in_ch, list(cfg.channels), blocks, cfg, rates[r:r + max(blocks)]))
            r += max(blocks)
            in_ch = list(cfg.channels[:len(blocks)])
        self.out_channels = tuple(in_ch)
        self.stride = cfg.stem_stride * 2 ** (len(in_ch) - 1)
        if not 0 <= cfg.head_from < len(self.out_channels):
            raise ValueError(f"head_from must index a branch, got {cfg.head_from}")
        self.head = AllMLPHead(self.out_channels[cfg.head_from:], cfg.head_dim, num_classes) if num_classes else None

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_images("HRViT", x, self.in_chans)
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"H and W must be multiples of {self.stride} for the backbone, got "
                             f"{tuple(x.shape[-2:])}; the segmentation model pads automatically")
        xs = [self.stem(x)]
        for module in self.stages:
            xs = module(xs)
        return xs

    def forward(self, x: torch.Tensor):
        if self.head is None:
            return self.forward_features(x)
        check_images("HRViT", x, self.in_chans)
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        feats = self.forward_features(F.pad(x, (0, pw, 0, ph)) if ph or pw else x)[self.cfg.head_from:]
        logits = self.head.logits_at(feats, (h + ph, w + pw))
        return logits[..., :h, :w]


# ============================================================================ variants
VARIANTS = {
    "b1": HRViTConfig(),
    "b2": HRViTConfig(channels=(48, 96, 240, 384), dim_head=24, mlp_ratio=(2, 3, 3, 3),
                      blocks=((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 2), (1, 1, 6, 2))),
    "b3": HRViTConfig(channels=(64, 128, 256, 512), mlp_ratio=(2, 2, 2, 2), head_dim=768,
                      blocks=((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 3), (1, 1, 6, 3))),
    # Textbook size for DigitScenes (64 x 64) on 2 CPU cores: the same topology cut to four
    # modules (one per stage), one block per branch, narrow branches (~0.24 M parameters).  Two
    # scale adaptations, both ablated in chapter 01: the stem stops at stride 2 (branch maps
    # 32/16/8/4 instead of 16/8/4/2: a digit stroke is ~3 px), and the windows of the two coarse
    # branches are 4 (a 7 would pad a 4 x 4 or 8 x 8 map to 7 or 14 rows).
    "textbook": HRViTConfig(channels=(16, 32, 64, 96), stem_channels=16, dim_head=16,
                            window=(1, 2, 4, 4), mlp_ratio=(2, 2, 2, 2), head_dim=32, stem_stride=2,
                            blocks=((1,), (1, 1), (1, 1, 1), (1, 1, 1, 1))),
}
# Single-change ablations of the textbook variant (chapter 01, "claims re-tested"): arm -> overrides.
ABLATIONS = {
    "reference": {},
    "dense DES": {"des": "dense"},                          # DES vs the C x C projection it factorises
    "separate K/V": {"kv": "separate"},                    # shared vs separate key projection
    "head skips the finest branch": {"head_from": 1},      # the high-resolution branch, for the head
    "stem to stride 4": {"stem_stride": 4},                # the published stem (scale adaptation off)
    "identity attention BN (paper)": {"attn_bn_init": "identity"},
    "Hardswish in DES (paper)": {"des_act": "hardswish"},
    "windows 7 on coarse branches": {"window": (1, 2, 7, 7)},   # the published windows (adaptation off)
}
ABLATION_SEEDS = (0, 1, 2)
LR_SWEEP = (1e-3, 1e-2)              # around the engine's default 3e-3, one seed each, same budget


def ablation_budget(budget):
    """The book's ablation budget (:func:`hrvit_edu.train.ablation.ablation_budget`: half the main
    budget, final evaluation only); chapter 01 states the reference's mIoU at it."""
    from ..train.ablation import ablation_budget as half

    return half(budget)


def ablation_sweep() -> list[tuple[list, list[int]]]:
    """Chapter 01's whole sweep as (arms, seeds) groups: every ``ABLATIONS`` arm with each of
    ``ABLATION_SEEDS``, then the learning-rate sweep ``LR_SWEEP`` with seed 0.  The chapter and
    ``tools/run_ablations.py`` both run (or check) exactly this list."""
    from ..train.ablation import sweep_groups  # the training package is needed only here, not at import

    return sweep_groups(ABLATIONS, ABLATION_SEEDS, LR_SWEEP)


OFFICIAL_BACKBONE_PARAMS = {"b1": 7.758e6, "b2": 20.311e6, "b3": 25.508e6}


def _factory(variant: str):
    def make(num_classes=11, in_chans=1, **overrides):
        cfg = dataclasses.replace(VARIANTS[variant], **overrides)
        return HRViT(cfg, num_classes=num_classes, in_chans=in_chans)
    make.__doc__ = f"HRViT-{variant}" + (" (published variant)" if variant in OFFICIAL_BACKBONE_PARAMS
                                          else " (textbook variant for DigitScenes)")
    return make


for _v in VARIANTS:
    register_model(f"hrvit_{_v}", paper="hrvit")(_factory(_v))
