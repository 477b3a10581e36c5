"""TransNeXt (Shi, CVPR 2024): aggregated attention, length-scaled cosine attention and ConvGLU.

A 4-stage pyramid (strides 4, 8, 16, 32) of pre-norm blocks on tokens X (B, N = H W, C):

    X <- X + DropPath(Attn(LN(X))),   X <- X + DropPath(ConvGLU(LN(X)))          (LN eps 1e-6)

* stages 1-3: **aggregated attention** (:class:`AggregatedAttention`): every query attends, in one
  softmax, to its k x k neighbourhood (fine, "foveal") and to P = (H/sr)(W/sr) pooled tokens
  sigma(X) = LN(AvgPool(GELU(W_sr X))) (coarse, "peripheral"), with shared K/V projections, a
  learnable local bias table, log-spaced continuous position biases (log-CPB) on the pooled keys,
  and positional attention q^.T + beta added after the softmax (eqs. 2.3-2.8);
* stage 4: full attention with the same length-scaled cosine logits and log-CPB
  (:class:`LSCAttention`);
* every logit is **length-scaled cosine**: ``(q^ + e) . k^ * tau * ln N`` with q^, k^ unit vectors,
  ``tau = softplus(t)`` learnable per head (initialised to 1/0.24) and N the number of keys the
  query sees (eq. 2.1);
* the channel mixer is **ConvGLU**: ``W_2 (GELU(DWConv3x3(g)) * u)`` with ``[g; u] = W_1 X``,
  hidden width floor(2 floor(r C) / 3) (eq. 2.11).

Patch embeddings: a k(2p-1)/s(p) conv (p = 4 published) then k3/s2 convs, each with LayerNorm.

Two heads, as for every model of the book:

* ``task="segment"`` (default): the four stage maps, each after its stage LayerNorm (the official
  dense-prediction backbone), and with ``num_classes > 0`` the book's all-MLP head, logits at the
  input size;
* ``task="classify"``: the official ImageNet classifier (mean of the stage-4 tokens after its
  LayerNorm, then a linear layer).  ``create_model("transnext_tiny", num_classes=1000,
  in_chans=3, task="classify")`` has the published parameter count.

Unlike the official classifier (which fixes the mask, N, the pool size and the bias table at
construction, so any other input size crashes), every size here is taken from the input on each
forward, as the official *downstream* code does; the pool size is max(1, H // sr).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import prefer_kernel
from ..kernels.aggregated_attention import aggregated_attention, aggregated_attention_reference
from ..kernels.window_attention import scaled_window_attention
from ..nn import AllMLPHead, DropPath
from ..nn.checks import check_images, check_model_args
from ..registry import register_variants
from ..train.evaluate import SCALE_TEST_IMAGES, TEST_SCALES, multiscale_miou, scale_metric  # noqa: F401 (chapter 02 uses them)

TAU_INIT = 1 / 0.24          # softplus(t) at initialisation: the entropy estimate's constant (eq. 2.2)


def inverse_softplus(y: float) -> float:
    """t with softplus(t) = y: ln(e^y - 1)."""
    return math.log(math.expm1(y))


# ------------------------------------------------------------------------------ log-CPB, eq. (2.12)
def pool_axis(n: int, p: int) -> torch.Tensor:
    """Coordinates of the P adaptive-average-pool bins of an axis of n: each bin's mean position."""
    return F.adaptive_avg_pool1d(torch.arange(n, dtype=torch.float32)[None], p)[0]


@functools.lru_cache(maxsize=128)
def _cpb_table(query_hw: tuple[int, int], key_hw: tuple[int, int], pretrain_hw: tuple[int, int]):
    """(unique log-spaced offsets (U, 2), index (Q K,) into them) for a query grid and a pooled key grid."""
    qy, qx = (torch.arange(n, dtype=torch.float32) for n in query_hw)
    ky, kx = (pool_axis(n, p) for n, p in zip(query_hw, key_hw))
    qy, qx = (t.reshape(-1) for t in torch.meshgrid(qy, qx, indexing="ij"))
    ky, kx = (t.reshape(-1) for t in torch.meshgrid(ky, kx, indexing="ij"))
    dy = (qy[:, None] - ky[None, :]) / max(pretrain_hw[0] - 1, 1) * 8
    dx = (qx[:, None] - kx[None, :]) / max(pretrain_hw[1] - 1, 1) * 8
    table, index = torch.unique(torch.stack([dy, dx], -1).reshape(-1, 2), return_inverse=True, dim=0)
    return log_spaced(table), index


def log_spaced(delta: torch.Tensor) -> torch.Tensor:
    """f(Delta) = sign(Delta) log2(1 + |Delta|) / log2(8)."""
    return torch.sign(delta) * torch.log2(1.0 + delta.abs()) / 3.0


class TableBias(nn.Module):
    """The comparator of log-CPB: a learnable bias per (head, query, key) *at the training grids*,
    resized bilinearly (key axes, then query axes) to other grids, like a Swin-style table."""

    def __init__(self, heads: int, train_query_hw, train_key_hw):
        super().__init__()
        self.train_query_hw, self.train_key_hw = tuple(train_query_hw), tuple(train_key_hw)
        nq, nk = train_query_hw[0] * train_query_hw[1], train_key_hw[0] * train_key_hw[1]
        self.table = nn.Parameter(nn.init.trunc_normal_(torch.empty(heads, nq, nk), std=0.02))

    def forward(self, query_hw, key_hw):
        return resize_bias(self.table, self.train_query_hw, self.train_key_hw, query_hw, key_hw)


def resize_bias(b: torch.Tensor, train_query_hw, train_key_hw, query_hw, key_hw) -> torch.Tensor:
    """(h, Qt, Kt) -> (h, Q, K): bilinear on the key grid, then on the query grid (official order)."""
    if tuple(query_hw) == tuple(train_query_hw) and tuple(key_hw) == tuple(train_key_hw):
        return b
    h, nq = b.shape[:2]
    b = F.interpolate(b.reshape(h * nq, 1, *train_key_hw), size=tuple(key_hw), mode="bilinear")
    b = b.reshape(h, nq, -1).transpose(1, 2).reshape(-1, 1, *train_query_hw)
    b = F.interpolate(b, size=tuple(query_hw), mode="bilinear")
    return b.reshape(h, -1, query_hw[0] * query_hw[1]).transpose(1, 2)


class LogCPB(nn.Module):
    """Continuous position bias B[h, q, m] = MLP(f(Delta_y), f(Delta_x)), MLP = Linear(2, 512) -> ReLU
    -> Linear(512, heads), offsets normalised by the pre-training grid (eq. 2.12).

    ``mode="extrapolate"`` evaluates the MLP at the actual query/key grids;
    ``mode="interpolate"`` (the official downstream default) evaluates it at the training grids
    and resizes the bias bilinearly (key axes, then query axes) to the actual ones.
    """

    def __init__(self, heads: int, hidden: int = 512):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2, hidden), nn.Linear(hidden, heads)

    def mlp(self, coords: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(coords)))

    def bias(self, query_hw, key_hw, pretrain_hw) -> torch.Tensor:
        table, index = _cpb_table(tuple(query_hw), tuple(key_hw), tuple(pretrain_hw))
        table, index = table.to(self.fc1.weight), index.to(self.fc1.weight.device)
        nq, nk = query_hw[0] * query_hw[1], key_hw[0] * key_hw[1]
        return self.mlp(table).t()[:, index].reshape(-1, nq, nk)            # (heads, Q, K)

    def forward(self, query_hw, key_hw, pretrain_hw, mode="extrapolate", train_query_hw=None, train_key_hw=None):
        if mode == "extrapolate" or train_query_hw is None:
            return self.bias(query_hw, key_hw, pretrain_hw)
        if mode != "interpolate":
            raise ValueError(f"LogCPB: mode must be 'extrapolate' or 'interpolate', got {mode!r}")
        return resize_bias(self.bias(train_query_hw, train_key_hw, pretrain_hw), train_query_hw, train_key_hw,
                           query_hw, key_hw)


# ------------------------------------------------------------------------------ attention
def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, h, c // h).transpose(1, 2)                    # (B, h, N, d)


ATTENTIONS = ("lsca", "softmax")


class _LSCABase(nn.Module):
    """Shared parameters of both TransNeXt attentions: t (tau = softplus(t)), e, log-CPB, W_proj.

    ``attention="softmax"`` is chapter 02's comparator: scaled dot-product logits q . k / sqrt(d)
    (no normalisation, no e, no tau) and a :class:`TableBias` at the training grids instead of
    log-CPB.  ``train_hw`` is the query grid at the training size (for interpolate mode and the table).
    """

    def __init__(self, dim: int, heads: int, sr: int, pretrain_hw, train_hw, cpb_mode: str, attention: str,
                 use_kernel):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{type(self).__name__}: dim {dim} is not divisible by heads {heads}")
        if attention not in ATTENTIONS:
            raise ValueError(f"{type(self).__name__}: attention must be one of {ATTENTIONS}, got {attention!r}")
        self.dim, self.heads, self.d, self.sr = dim, heads, dim // heads, sr
        self.pretrain_hw, self.cpb_mode, self.use_kernel = tuple(pretrain_hw), cpb_mode, use_kernel
        self.attention = attention
        self.train_hw = tuple(train_hw)
        self.train_pool_hw = (max(1, train_hw[0] // sr), max(1, train_hw[1] // sr))
        if attention == "lsca":
            self.temperature = nn.Parameter(torch.full((heads,), inverse_softplus(TAU_INIT)))
            self.query_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(heads, self.d), std=0.02))
            self.cpb = LogCPB(heads)
        else:
            self.table = TableBias(heads, self.train_hw, self.train_pool_hw)
        self.proj = nn.Linear(dim, dim)

    def tau(self) -> torch.Tensor:
        return F.softplus(self.temperature)

    def _fused(self, x):
        return self.attention == "lsca" and (self.use_kernel if self.use_kernel is not None else prefer_kernel(x))

    def _bias(self, query_hw, key_hw):
        if self.attention == "softmax":
            return self.table(query_hw, key_hw)
        return self.cpb(query_hw, key_hw, self.pretrain_hw, self.cpb_mode, self.train_hw, self.train_pool_hw)


class AggregatedAttention(_LSCABase):
    """Pixel-focused attention + positional attention with LSCA (stages 1-3), eqs. (2.3)-(2.7).

    x (B, H W, C) -> (B, H W, C).  ``sr`` sets the pooled grid (H // sr, W // sr).
    ``positional=False`` drops the positional-attention term q^.T + beta (an ablation).
    """

    def __init__(self, dim: int, heads: int, sr: int, window: int = 3, pretrain_hw=(56, 56), train_hw=(56, 56),
                 cpb_mode: str = "interpolate", attention: str = "lsca", positional: bool = True,
                 use_kernel: bool | None = None):
        super().__init__(dim, heads, sr, pretrain_hw, train_hw, cpb_mode, attention, use_kernel)
        if window % 2 != 1:
            raise ValueError(f"AggregatedAttention: the window must be odd, got {window}")
        self.window = window
        kk = window * window
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)              # shared by the window and the pooled path
        self.sr_conv = nn.Conv2d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim)                  # eps 1e-5, as in the code
        self.relative_pos_bias_local = nn.Parameter(nn.init.trunc_normal_(torch.empty(heads, kk), std=4e-4))
        self.positional = positional
        if positional:
            self.learnable_tokens = nn.Parameter(nn.init.trunc_normal_(torch.empty(heads, self.d, kk), std=0.02))
            self.learnable_bias = nn.Parameter(torch.zeros(heads, kk))
        else:                                          # the ablation: no positional attention
            self.register_buffer("learnable_tokens", torch.zeros(heads, self.d, kk), persistent=False)
            self.register_buffer("learnable_bias", torch.zeros(heads, kk), persistent=False)

    def pool_hw(self, hw) -> tuple[int, int]:
        return max(1, hw[0] // self.sr), max(1, hw[1] // self.sr)

    def pooled_tokens(self, x: torch.Tensor, hw) -> torch.Tensor:
        """sigma(X) = LN(AvgPool(GELU(W_sr X))), (B, P, C)  (eq. 2.3)."""
        b, n, c = x.shape
        m = x.transpose(1, 2).reshape(b, c, *hw)
        pooled = F.adaptive_avg_pool2d(F.gelu(self.sr_conv(m)), self.pool_hw(hw))
        return self.norm(pooled.flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor, hw) -> torch.Tensor:
        b, n, c = x.shape
        if c != self.dim or n != hw[0] * hw[1]:
            raise ValueError(f"AggregatedAttention expects (B, {hw[0]}*{hw[1]}, {self.dim}), got {tuple(x.shape)}")
        h = self.heads
        q = _heads(self.q(x), h)
        k, v = (_heads(t, h) for t in self.kv(x).chunk(2, -1))
        kp, vp = (_heads(t, h) for t in self.kv(self.pooled_tokens(x, hw)).chunk(2, -1))
        b_pool = self._bias(hw, self.pool_hw(hw))
        args = (self.relative_pos_bias_local, b_pool, self.learnable_tokens, self.learnable_bias, hw, self.window)
        if self.attention == "softmax":             # lam_i = 1 / sqrt(d), raw q and k, e = 0
            tau = q.new_full((h,), self.d ** -0.5)
            o = aggregated_attention_reference(q, k, v, kp, vp, q.new_zeros(h, self.d), tau, *args, length_scaled=False)
            return self.proj(o.transpose(1, 2).reshape(b, n, c))
        q, k, kp = F.normalize(q, dim=-1), F.normalize(k, dim=-1), F.normalize(kp, dim=-1)
        attend = aggregated_attention if self._fused(x) else aggregated_attention_reference
        o = attend(q, k, v, kp, vp, self.query_embedding, self.tau(), *args)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class LSCAttention(_LSCABase):
    """Stage 4: full multi-head attention with length-scaled cosine logits and log-CPB (eq. 2.1):

        A = softmax( tau ln(H W) (q^ + e) . k^  +  B_cpb ),   o = A v
    """

    def __init__(self, dim: int, heads: int, pretrain_hw=(7, 7), train_hw=(7, 7), cpb_mode: str = "interpolate",
                 attention: str = "lsca", use_kernel: bool | None = None):
        super().__init__(dim, heads, 1, pretrain_hw, train_hw, cpb_mode, attention, use_kernel)
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, hw) -> torch.Tensor:
        b, n, c = x.shape
        if c != self.dim or n != hw[0] * hw[1]:
            raise ValueError(f"LSCAttention expects (B, {hw[0]}*{hw[1]}, {self.dim}), got {tuple(x.shape)}")
        h = self.heads
        q, k, v = (_heads(t, h) for t in self.qkv(x).chunk(3, -1))
        bias = self._bias(hw, hw)                                                # (h, N, N)
        if self.attention == "softmax":
            scale = q.new_full((b, h, n), self.d ** -0.5)
        else:
            q = F.normalize(q, dim=-1) + self.query_embedding[None, :, None, :]
            k = F.normalize(k, dim=-1)
            scale = (self.tau()[None, :, None] * math.log(n)).expand(b, h, n)  # tau ln N, N = H W
        if self._fused(x):
            g = b * h
            o = scaled_window_attention(q.reshape(g, n, -1), k.reshape(g, n, -1), v.reshape(g, n, -1),
                                        torch.full((g,), n, dtype=torch.int64, device=x.device),
                                        scale.reshape(g, n), bias).reshape(b, h, n, -1)
        else:
            s = (q @ k.transpose(-1, -2)) * scale[..., None] + bias[None]
            o = torch.softmax(s, -1) @ v
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


# ------------------------------------------------------------------------------ ConvGLU, eq. (2.11)
def convglu_hidden(dim: int, mlp_ratio: float) -> int:
    """h' = floor(2 floor(r C) / 3): ConvGLU's two input projections cost what one MLP(r) does."""
    return int(2 * int(dim * mlp_ratio) / 3)


class ConvFFN(nn.Module):
    """The comparator ConvGLU replaces (PVT v2): y = W_2 GELU(DWConv3x3(W_1 x)), hidden r C."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, self.hidden)
        self.dwconv = nn.Conv2d(self.hidden, self.hidden, 3, padding=1, groups=self.hidden)
        self.fc2 = nn.Linear(self.hidden, dim)

    def forward(self, x: torch.Tensor, hw) -> torch.Tensor:
        b, n, _ = x.shape
        g = self.dwconv(self.fc1(x).transpose(1, 2).reshape(b, self.hidden, *hw)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(g))


class ConvGLU(nn.Module):
    """[g; u] = W_1 x;  y = W_2 (GELU(DWConv3x3(g)) * u)   (the gate branch g gets the conv)."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.hidden = convglu_hidden(dim, mlp_ratio)
        self.fc1 = nn.Linear(dim, 2 * self.hidden)
        self.dwconv = nn.Conv2d(self.hidden, self.hidden, 3, padding=1, groups=self.hidden)
        self.fc2 = nn.Linear(self.hidden, dim)

    def forward(self, x: torch.Tensor, hw) -> torch.Tensor:
        b, n, _ = x.shape
        g, u = self.fc1(x).chunk(2, -1)
        g = self.dwconv(g.transpose(1, 2).reshape(b, self.hidden, *hw)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(g) * u)


# ------------------------------------------------------------------------------ blocks and model
class TransNeXtBlock(nn.Module):
    """x <- x + DropPath(Attn(LN(x)));  x <- x + DropPath(ConvGLU(LN(x)))."""

    def __init__(self, dim, heads, mlp_ratio, sr, window, pretrain_hw, train_hw, drop_path=0.0,
                 cpb_mode="interpolate", attention="lsca", use_kernel=None, mlp="convglu", positional=True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if sr == 1:
            self.attn = LSCAttention(dim, heads, pretrain_hw, train_hw, cpb_mode, attention, use_kernel)
        else:
            self.attn = AggregatedAttention(dim, heads, sr, window, pretrain_hw, train_hw, cpb_mode, attention,
                                            positional, use_kernel)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        if mlp not in ("convglu", "convffn"):
            raise ValueError(f"TransNeXtBlock: mlp must be 'convglu' or 'convffn', got {mlp!r}")
        self.mlp = ConvGLU(dim, mlp_ratio) if mlp == "convglu" else ConvFFN(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, hw):
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: conv (kernel, stride, padding kernel // 2) then LayerNorm (eps 1e-5)."""

    def __init__(self, cin, cout, kernel, stride):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, kernel, stride, kernel // 2)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x):
        x = self.proj(x)
        hw = tuple(x.shape[-2:])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


@dataclasses.dataclass(frozen=True)
class TransNeXtConfig:
    dims: tuple[int, ...] = (72, 144, 288, 576)
    heads: tuple[int, ...] = (3, 6, 12, 24)
    depths: tuple[int, ...] = (2, 2, 15, 2)
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)          # 1: full LSCA attention (stage 4)
    window: int = 3
    patch: int = 4                                     # stem: conv k(2p-1) s(p), so stage strides p, 2p, 4p, 8p
    img_size: int = 224                                # training size: the interpolate-mode CPB grid
    pretrain_size: int | None = None                   # the CPB's normalising grid (None: img_size)
    cpb_mode: str = "interpolate"                      # "interpolate" (official downstream) | "extrapolate"
    attention: str = "lsca"                            # "softmax": dot-product logits + bias table (comparator)
    mlp: str = "convglu"                               # "convffn": PVT v2's channel mixer (comparator)
    positional: bool = True                            # False: no positional attention q^.T + beta (ablation)
    drop_path: float = 0.0
    head_dim: int = 256                                # E of the all-MLP head (segmentation form)
    task: str = "segment"                              # "segment" | "classify" (ImageNet)
    use_kernel: bool | None = None                     # None: kernels.prefer_kernel (fused natively on CUDA)


class TransNeXt(nn.Module):
    """TransNeXt segmenter / backbone (``task="segment"``) or ImageNet classifier (``"classify"``)."""

    def __init__(self, cfg: TransNeXtConfig, *, num_classes: int, in_chans: int):
        check_model_args("TransNeXt", num_classes, in_chans)
        if cfg.task not in ("segment", "classify"):
            raise ValueError(f"TransNeXt: task must be 'segment' or 'classify', got {cfg.task!r}")
        if cfg.cpb_mode not in ("interpolate", "extrapolate"):
            raise ValueError(f"TransNeXt: cpb_mode must be 'interpolate' or 'extrapolate', got {cfg.cpb_mode!r}")
        n = len(cfg.dims)
        if not all(len(t) == n for t in (cfg.heads, cfg.depths, cfg.mlp_ratios, cfg.sr_ratios)):
            raise ValueError("TransNeXt: dims, heads, depths, mlp_ratios and sr_ratios need one entry per stage")
        super().__init__()
        self.cfg, self.in_chans, self.num_classes = cfg, in_chans, num_classes
        pretrain = cfg.pretrain_size or cfg.img_size
        rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist()
        self.embeds, self.stages, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(n):
            stride = cfg.patch * 2 ** i
            if i == 0:
                self.embeds.append(PatchEmbed(in_chans, cfg.dims[0], 2 * cfg.patch - 1, cfg.patch))
            else:
                self.embeds.append(PatchEmbed(cfg.dims[i - 1], cfg.dims[i], 3, 2))
            grid, train = (pretrain // stride,) * 2, (max(1, cfg.img_size // stride),) * 2
            blocks = [TransNeXtBlock(cfg.dims[i], cfg.heads[i], cfg.mlp_ratios[i], cfg.sr_ratios[i], cfg.window,
                                     grid, train, rates[sum(cfg.depths[:i]) + j], cfg.cpb_mode, cfg.attention,
                                     cfg.use_kernel, cfg.mlp, cfg.positional)
                      for j in range(cfg.depths[i])]
            self.stages.append(nn.ModuleList(blocks))
            self.norms.append(nn.LayerNorm(cfg.dims[i], eps=1e-6))
        self.apply(_init_weights)
        if cfg.task == "segment":
            self.head = AllMLPHead(cfg.dims, cfg.head_dim, num_classes) if num_classes else None
        else:
            self.head = nn.Linear(cfg.dims[-1], num_classes) if num_classes else None
            if self.head is not None:
                _init_weights(self.head)

    def no_weight_decay(self) -> set[str]:
        """Names the official recipe keeps out of weight decay (read by ``train.fit``)."""
        return no_weight_decay(self)

    def use_kernels(self, on: bool | None = True) -> "TransNeXt":
        """Force (True), forbid (False) or leave to ``prefer_kernel`` (None) the fused attention ops."""
        for m in self.modules():
            if isinstance(m, _LSCABase):
                m.use_kernel = on
        return self

    def _stages(self, x):
        b = x.shape[0]
        for embed, blocks, norm in zip(self.embeds, self.stages, self.norms):
            x, hw = embed(x)
            for blk in blocks:
                x = blk(x, hw)
            x = norm(x)
            yield x, hw
            x = x.transpose(1, 2).reshape(b, -1, *hw)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_images("TransNeXt", x, self.in_chans)
        if self.cfg.task != "segment":
            raise ValueError("TransNeXt: forward_features is the segmentation backbone (task='segment')")
        return [t.transpose(1, 2).reshape(x.shape[0], -1, *hw) for t, hw in self._stages(x)]

    def forward(self, x: torch.Tensor):
        if self.cfg.task == "classify":
            check_images("TransNeXt", x, self.in_chans)
            *_, (last, _) = self._stages(x)
            pooled = last.mean(1)
            return pooled if self.head is None else self.head(pooled)
        feats = self.forward_features(x)
        if self.head is None:
            return feats
        return self.head.logits_at(feats, x.shape[-2:])


def _init_weights(m: nn.Module) -> None:
    """The official init: Linear trunc-normal(0.02) / bias 0; Conv2d normal(0, sqrt(2 / fan_out));
    LayerNorm (1, 0).  The explicit parameters (t, e, b_loc, T, beta) keep their own."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def no_weight_decay(model: nn.Module) -> set[str]:
    """Parameter names the official recipe excludes from weight decay: 1-D parameters, biases and
    names containing query_embedding, relative_pos_bias_local, cpb or temperature."""
    keys = ("query_embedding", "relative_pos_bias_local", "cpb", "temperature")
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(".bias") or any(k in n for k in keys)}


VARIANTS = {   # drop-path: the published ImageNet-1K rates at 224 (spec B8), linear over depth
    "micro": TransNeXtConfig(dims=(48, 96, 192, 384), heads=(2, 4, 8, 16), drop_path=0.15),
    "tiny": TransNeXtConfig(drop_path=0.25),
    "small": TransNeXtConfig(depths=(5, 5, 22, 5), drop_path=0.45),
    "base": TransNeXtConfig(dims=(96, 192, 384, 768), heads=(4, 8, 16, 32), depths=(5, 5, 23, 5), drop_path=0.6),
    # Textbook size for DigitScenes (64 x 64) on 2 CPU cores: the published block, ratios, window
    # and pooling ratios, two blocks per stage, narrow stages with d = 16 per head.  One scale
    # adaptation, as in chapters 01 and 04: the stem stops at stride 2 (patch 2: maps 32/16/8/4),
    # which also makes the pooled grid 4 x 4 in stages 1-3 (H/16 instead of H/32).
    "textbook": TransNeXtConfig(dims=(16, 32, 64, 96), heads=(1, 2, 4, 6), depths=(2, 2, 2, 2), patch=2,
                                img_size=64, head_dim=32, drop_path=0.0),
}
# Single-change ablations of the textbook variant (chapter 02, "claims re-tested"): arm -> overrides.
ABLATIONS = {
    "reference": {},
    "softmax + bias table": {"attention": "softmax"},      # plain attention: no LSCA, no log-CPB
    "ConvFFN (not ConvGLU)": {"mlp": "convffn"},
}
ABLATION_SEEDS = (0, 1, 2)



def ablation_budget(budget):
    """Chapter 02 ablates at the *full* main budget (final evaluation only): at half of it the
    textbook TransNeXt has barely left the all-background solution (0.33 test mIoU, seed 0,
    measured; 0.82 at the full budget), so no gap could resolve."""
    return budget.replace(eval_every=0)


def ablation_sweep() -> list[tuple[list, list[int]]]:
    """Chapter 02's sweep as (arms, seeds) groups: every ``ABLATIONS`` arm with each seed."""
    from ..train.ablation import sweep_groups

    return sweep_groups(ABLATIONS, ABLATION_SEEDS)


def ablation_extra(model: nn.Module, scenes=None) -> dict:
    """Each trained arm's test mIoU on DigitScenes re-rendered at ``TEST_SCALES`` x the training
    resolution (claim b, multi-scale inference), recorded next to its other metrics."""
    return multiscale_miou(model, scenes)


# Official README (ImageNet-1K, 224 x 224): parameters and FLOPs.
PUBLISHED_PARAMS = {"micro": 12.809e6, "tiny": 28.259e6, "small": 49.742e6, "base": 89.721e6}
PUBLISHED_GFLOPS_224 = {"micro": 2.7, "tiny": 5.7, "small": 10.3, "base": 18.4}


register_variants("transnext", paper="transnext", model_cls=TransNeXt, variants=VARIANTS, title="TransNeXt")
