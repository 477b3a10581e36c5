"""Expediting a trained ViT without fine-tuning (Liang et al., NeurIPS 2022): token clustering and
token reconstruction, two parameter-free layers placed inside a trained model.

Chapter 05.  The first alpha layers run on the full H x W token grid, a **clustering** layer turns
the N = H W tokens into M = h w cluster centres, the next beta layers run on the centres, and a
**reconstruction** layer brings back N tokens for the rest of the model (or the head).  No weight
changes.

**Token clustering** (a local soft k-means; EM with a locality prior).  Tokens X (B, N, C) on the
H x W grid, initial centres by average pooling to h x w,

    C^0 = AdaptiveAvgPool_{h x w}(X)                                         (B, M, C)       (5.1)

token i starts in cell l(i) = (floor(y_i h / H), floor(x_i w / W)) (nearest resizing of the
h x w index image) and may only join the lambda x lambda cells around it (fixed from the start):

    A_ij = 1  iff  |u_i - u_j| <= r  and  |v_i - v_j| <= r,      r = lambda // 2             (5.2)

then, kappa times, with the squared distance D_ij = ||x_i - c_j||^2,

    Q_ij = exp(-t D_ij) A_ij / sum_j' exp(-t D_ij') A_ij'            (softmax over clusters)  (5.3)
    c_j  = sum_i Q_ij x_i / max(sum_i Q_ij, 1e-16)                   (weighted mean)          (5.4)

t multiplies the distance (the official Segmenter / SAM / Mask2Former code, t = 0.02 for
Segmenter); the DINO port stores tau = 1 / t and divides: the same layer.  (5.3) is the E-step and
(5.4) the M-step of minimising the free energy

    F(Q, C) = sum_i sum_j Q_ij D_ij + (1/t) sum_i sum_j Q_ij log Q_ij     over Q_i. in the simplex
                                                                    restricted to A_i.        (5.5)

(5.3) is F's minimiser over Q for fixed C (a Gibbs distribution) and (5.4) its minimiser over C
for fixed Q (a weighted mean), so no iteration increases F (chapter 05 checks it numerically).
The CLS token, if any, is kept aside by the caller.

**Token reconstruction.**  With the layer-alpha tokens X^a (B, N, C), the layer-alpha centres C^a
(B, M, C) and the centres after the beta layers C^ (B, M, C'),

    W_ij = exp(-t (D_ij - min_j' D_ij'))     D_ij = ||x^a_i - c^a_j||^2                      (5.6)
    keep the k largest W_ij of each row (ties kept), zero the rest, normalise the row:
        "l2" (official code, F.normalize):  W_ij / ||W_i.||_2
        "l1" (a convex combination):        W_ij / sum_j W_ij                                 (5.7)
    x^_i = sum_j W_ij c^_j                                                        (B, N, C')  (5.8)

Subtracting the row minimum rescales a row by a constant: nothing changes under either
normalisation, but no row underflows to all zeros (exp(-0.02 D) is 0 in fp32 once D > ~5000).

**Baselines** (the paper's comparison): average pooling to h x w (:func:`avgpool_tokens`) with
bilinear upsampling back (:func:`bilinear_reconstruction`), and naive unpooling (each token copies
its nearest centre, :func:`hard_labels` and :func:`naive_unpooling`).

All distance arithmetic runs in fp32 at least (fp16 inputs are promoted): squared norms of
ViT features overflow fp16.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.digitscenes import SceneConfig
from ..kernels._runtime import prefer_kernel
from ..kernels.token_clustering import (
    NORMS,
    initial_cells,
    local_em,
    local_em_reference,
    squared_distances,
    topk_reconstruction,
    topk_reconstruction_reference,
    topk_weights_reference,
    work_dtype,
)
from ..nn import DropPath
from ..nn.checks import check_images, check_model_args
from ..registry import register_variants
from ..train.budget import Budget


# ============================================================================ checks
def _grid(n: int, hw: tuple[int, int], what: str) -> tuple[int, int]:
    h, w = (int(v) for v in hw)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {hw}")
    if h * w != n:
        raise ValueError(f"{what} {h}x{w} holds {h * w} tokens, but the input has {n}")
    return h, w


def _tokens(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"{name} must be (B, N, C) tokens, got shape {tuple(getattr(x, 'shape', ()))}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


# ============================================================================ geometry
def locality_mask(grid: tuple[int, int], clusters: tuple[int, int], lam: int = 5, device=None) -> torch.Tensor:
    """A of eq. (5.2): (N, M) bool, token i may join centre j when their cells are at most
    lambda // 2 apart along both grid axes.  lambda must be odd."""
    if lam < 1 or lam % 2 == 0:
        raise ValueError(f"the neighbourhood lambda must be a positive odd number, got {lam}")
    h, w = clusters
    cell = initial_cells(grid, clusters, device)
    u, v = cell // w, cell % w
    cu = torch.arange(h, device=device).repeat_interleave(w)
    cv = torch.arange(w, device=device).repeat(h)
    r = lam // 2
    return ((u[:, None] - cu[None, :]).abs() <= r) & ((v[:, None] - cv[None, :]).abs() <= r)


# ============================================================================ clustering
def avgpool_tokens(x: torch.Tensor, grid: tuple[int, int], clusters: tuple[int, int]) -> torch.Tensor:
    """Eq. (5.1), and the pooling baseline: (B, N, C) on H x W -> (B, h w, C) by adaptive average
    pooling."""
    _tokens(x, "x")
    hh, ww = _grid(x.shape[1], grid, "the token grid")
    b, _, c = x.shape
    pooled = F.adaptive_avg_pool2d(x.transpose(1, 2).reshape(b, c, hh, ww), tuple(clusters))
    return pooled.flatten(2).transpose(1, 2)


def assignments(x: torch.Tensor, c: torch.Tensor, allowed: torch.Tensor, t: float) -> torch.Tensor:
    """Eq. (5.3): Q (B, N, M), each token's softmax over the centres it may join."""
    logits = (-t * squared_distances(x, c)).masked_fill(~allowed, float("-inf"))
    return logits.softmax(dim=-1)


def update_centres(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Eq. (5.4): c_j = sum_i Q_ij x_i / max(sum_i Q_ij, 1e-16); (B, M, C)."""
    return (q.transpose(1, 2) @ x) / q.sum(dim=1).clamp_min(1e-16)[..., None]


def free_energy(x: torch.Tensor, c: torch.Tensor, q: torch.Tensor, t: float) -> torch.Tensor:
    """Eq. (5.5) per image, (B,): sum Q D + (1/t) sum Q log Q (0 log 0 = 0)."""
    entropy_term = torch.where(q > 0, q * q.clamp_min(1e-300).log(), torch.zeros_like(q)).sum(dim=(1, 2))
    return (q * squared_distances(x, c)).sum(dim=(1, 2)) + entropy_term / t


def token_clustering(x: torch.Tensor, grid: tuple[int, int], clusters: tuple[int, int], *, lam: int = 5,
                     iters: int = 5, t: float | None = 0.02, tau: float | None = None,
                     return_assignments: bool = False, impl: str = "dense"):
    """Eqs. (5.1)-(5.4): (B, N, C) tokens on ``grid`` = (H, W) -> (B, h w, C) centres.

    ``t`` multiplies the distance (official Segmenter code, default 0.02); pass ``tau`` instead to
    divide by it (the DINO port's convention, tau = 1 / t).  ``iters`` = kappa, ``lam`` = lambda.
    ``impl="dense"`` is the official formulation (all N x M distances, the disallowed ones
    masked); ``impl="local"`` computes the same centres from each token's lambda^2 candidates
    only: the ``hrvit_edu::local_em`` op (Triton) where models use kernels (natively on CUDA, or
    when forced with ``use_backend("triton")``), else its torch form
    :func:`~hrvit_edu.kernels.token_clustering.local_em_reference`.  With ``return_assignments``
    (dense only), also returns the last Q (B, N, M) of (5.3), the one the returned centres were
    averaged with.
    """
    if impl not in ("dense", "local"):
        raise ValueError(f"impl must be 'dense' (official) or 'local', got {impl!r}")
    if return_assignments and impl != "dense":
        raise ValueError("return_assignments needs impl='dense' (the local form never forms the N x M Q)")
    _tokens(x, "x")
    hh, ww = _grid(x.shape[1], grid, "the token grid")
    h, w = (int(v) for v in clusters)
    if tau is not None:
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        t = 1.0 / tau
    if t is None or t <= 0:
        raise ValueError(f"the inverse temperature t must be positive, got {t}")
    if iters < 1:
        raise ValueError(f"iters (kappa) must be >= 1, got {iters}")
    allowed = locality_mask((hh, ww), (h, w), lam, x.device)
    xf = x.to(work_dtype(x))
    c = avgpool_tokens(xf, (hh, ww), (h, w))
    if impl == "local":              # the op (Triton) natively on CUDA; the torch local form elsewhere
        op = local_em if prefer_kernel(xf) else local_em_reference
        return op(xf, c, [hh, ww], [h, w], lam, float(t), iters).to(x.dtype)
    for _ in range(iters):
        q = assignments(xf, c, allowed, t)
        c = update_centres(xf, q)
    c = c.to(x.dtype)
    return (c, q) if return_assignments else c


# ============================================================================ reconstruction
def reconstruction_weights(x_a: torch.Tensor, c_a: torch.Tensor, *, t: float = 0.02, k: int = 20,
                           norm: str = "l2", stabilise: bool = True) -> torch.Tensor:
    """Eqs. (5.6)-(5.7): W (B, N, M) from the layer-alpha tokens and centres.

    ``norm="l2"`` is the official code (rows of unit L2 norm), ``"l1"`` the convex combination;
    ``stabilise=False`` drops the row-minimum shift (the official code: rows can underflow to 0).
    """
    _tokens(x_a, "x_a")
    _tokens(c_a, "c_a")
    if norm not in NORMS:
        raise ValueError(f"norm must be 'l2' (official code) or 'l1' (convex combination), got {norm!r}")
    if x_a.shape[0] != c_a.shape[0] or x_a.shape[2] != c_a.shape[2]:
        raise ValueError(f"x_a {tuple(x_a.shape)} and c_a {tuple(c_a.shape)} need the same batch and width")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return topk_weights_reference(x_a, c_a, t, k, norm, stabilise)


def token_reconstruction(x_a: torch.Tensor, c_a: torch.Tensor, c_hat: torch.Tensor, *, t: float = 0.02,
                         k: int = 20, norm: str = "l2", stabilise: bool = True, impl: str = "dense") -> torch.Tensor:
    """Eq. (5.8): N tokens (B, N, C') from the M refined centres ``c_hat`` (B, M, C'), with the
    weights of (5.6)-(5.7) computed from the layer-alpha ``x_a`` and ``c_a``.

    ``impl="dense"`` forms W (B, N, M) as the official code; ``impl="local"`` calls the
    ``hrvit_edu::topk_reconstruction`` op (the fused Triton kernel) where models use kernels
    (:func:`~hrvit_edu.kernels.prefer_kernel`: natively on CUDA, or when forced), else its torch
    reference; always stabilised."""
    _tokens(c_hat, "c_hat")
    if impl not in ("dense", "local"):
        raise ValueError(f"impl must be 'dense' (official) or 'local', got {impl!r}")
    if c_hat.shape[:2] != c_a.shape[:2]:
        raise ValueError(f"c_hat {tuple(c_hat.shape)} must hold the same (B, M) centres as c_a {tuple(c_a.shape)}")
    if impl == "local":
        if not stabilise:
            raise ValueError("impl='local' always stabilises (the kernel subtracts the row minimum)")
        op = topk_reconstruction if prefer_kernel(x_a) else topk_reconstruction_reference
        return op(x_a, c_a, c_hat, float(t), int(k), norm)
    wgt = reconstruction_weights(x_a, c_a, t=t, k=k, norm=norm, stabilise=stabilise)
    return (wgt @ c_hat.to(wgt.dtype)).to(c_hat.dtype)


def bilinear_reconstruction(c_hat: torch.Tensor, clusters: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """The baseline's way back: (B, h w, C') on the h x w grid, bilinearly resized to H x W."""
    _tokens(c_hat, "c_hat")
    h, w = _grid(c_hat.shape[1], clusters, "the cluster grid")
    b, _, c = c_hat.shape
    up = F.interpolate(c_hat.transpose(1, 2).reshape(b, c, h, w), size=tuple(grid), mode="bilinear",
                       align_corners=False)
    return up.flatten(2).transpose(1, 2)


def hard_labels(x_a: torch.Tensor, c_a: torch.Tensor) -> torch.Tensor:
    """Each token's nearest centre over *all* centres, argmin_j D_ij (B, N): the official code's
    hard labels (no locality mask), used only by naive unpooling."""
    return squared_distances(x_a.to(work_dtype(x_a)), c_a.to(work_dtype(x_a))).argmin(dim=-1)


def naive_unpooling(c_hat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The other baseline: token i copies centre labels[i] of ``c_hat`` (B, M, C') -> (B, N, C')."""
    _tokens(c_hat, "c_hat")
    return torch.gather(c_hat, 1, labels[..., None].expand(-1, -1, c_hat.shape[-1]))


# ============================================================================ the model expedited
@dataclasses.dataclass(frozen=True)
class ExpediteConfig:
    """Where and how a trained ViT is expedited (no weight changes).

    Clustering runs after block ``alpha`` (1-based: the first alpha blocks see every token), onto
    a ``clusters`` = (h, w) grid.  With ``beta`` = None the rest of the model and the decoder run
    on the centres and the *logits* are reconstructed (the official Segmenter placement);
    otherwise the tokens are reconstructed after block alpha + beta and the remaining gamma
    blocks run at full resolution.

    ``reduce`` / ``restore`` pick the method or a baseline: "cluster" (eqs. 5.1-5.4) or "pool"
    (average pooling only); "topk" (eqs. 5.6-5.8), "bilinear" or "unpool" (naive unpooling by
    hard labels).  With ``window`` = s, the H x W grid is cut into s x s windows and each window
    is clustered to its own ``clusters`` grid and reconstructed from its own centres (the Swin /
    SAM extension); the reduced map tiles the windows' cluster grids.
    """
    alpha: int
    clusters: tuple[int, int]
    beta: int | None = None
    lam: int = 5
    iters: int = 5
    t: float = 0.02
    k: int = 20
    norm: str = "l2"
    impl: str = "local"      # "local": the local EM + fused top-k ops | "dense": the official N x M form
    reduce: str = "cluster"  # "cluster" | "pool"
    restore: str = "topk"    # "topk" | "bilinear" | "unpool"
    window: int | None = None

    def __post_init__(self):
        for name, value, allowed in (("reduce", self.reduce, ("cluster", "pool")),
                                     ("restore", self.restore, ("topk", "bilinear", "unpool")),
                                     ("impl", self.impl, ("local", "dense")), ("norm", self.norm, NORMS)):
            if value not in allowed:
                raise ValueError(f"ExpediteConfig: {name} must be one of {allowed}, got {value!r}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"ExpediteConfig: window must be a positive number of tokens, got {self.window}")

    def reduced_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The token grid the beta layers see."""
        if self.window is None:
            return tuple(self.clusters)
        s = self.window
        if grid[0] % s or grid[1] % s:
            raise ValueError(f"ExpediteConfig: a {grid[0]}x{grid[1]} token grid does not split into "
                             f"{s}x{s} windows")
        return grid[0] // s * self.clusters[0], grid[1] // s * self.clusters[1]


def _to_windows(x: torch.Tensor, grid: tuple[int, int], s: tuple[int, int]) -> torch.Tensor:
    """(B, H W, C) -> (B nW, sh sw, C): every sh x sw window a batch entry (row-major windows)."""
    b, _, c = x.shape
    (h, w), (sh, sw) = grid, s
    x = x.reshape(b, h // sh, sh, w // sw, sw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, sh * sw, c)


def _from_windows(x: torch.Tensor, b: int, grid: tuple[int, int], s: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_to_windows` for windows of s = (sh, sw) tokens tiling ``grid``."""
    (h, w), (sh, sw), c = grid, s, x.shape[-1]
    x = x.reshape(b, h // sh, w // sw, sh, sw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * w, c)


def reduce_tokens(x: torch.Tensor, grid: tuple[int, int], e: ExpediteConfig):
    """The clustering layer (or the pooling baseline) of ``e``: (B, N, C) -> ((B, M, C), state),
    where ``state`` is what :func:`restore_tokens` needs."""
    b = x.shape[0]
    if e.window is None:
        g, xw, clusters = grid, x, tuple(e.clusters)
    else:
        e.reduced_grid(grid)
        g, clusters = (e.window, e.window), tuple(e.clusters)
        xw = _to_windows(x, grid, g)
    if e.reduce == "cluster":
        c = token_clustering(xw, g, clusters, lam=e.lam, iters=e.iters, t=e.t, impl=e.impl)
    else:
        c = avgpool_tokens(xw, g, clusters)
    state = (xw, c, g, clusters, grid, b)
    if e.window is not None:
        c = _from_windows(c, b, e.reduced_grid(grid), clusters)
    return c, state


def restore_tokens(c_hat: torch.Tensor, state, e: ExpediteConfig) -> torch.Tensor:
    """The reconstruction layer (or a baseline) of ``e``: (B, M, C') -> (B, N, C')."""
    xw, c_a, g, clusters, grid, b = state
    if e.window is not None:
        c_hat = _to_windows(c_hat, e.reduced_grid(grid), clusters)
    if e.restore == "topk":
        out = token_reconstruction(xw, c_a, c_hat, t=e.t, k=e.k, norm=e.norm, impl=e.impl)
    elif e.restore == "bilinear":
        out = bilinear_reconstruction(c_hat, clusters, g)
    else:
        out = naive_unpooling(c_hat, hard_labels(xw, c_a))
    return out if e.window is None else _from_windows(out, b, grid, g)


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) (GELU, ratio mlp_ratio)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@dataclasses.dataclass(frozen=True)
class ViTSegConfig:
    dim: int = 96
    depth: int = 8
    heads: int = 3
    mlp_ratio: float = 4.0
    patch: int = 4                   # token stride
    stem: str = "conv"               # "conv": 3x3 stride-2 convs down to the patch stride | "patch": one p x p conv
                                     # | "hybrid": each stride-2 conv followed by a stride-1 3x3 conv (BN, GELU)
    pos_grid: int = 16               # learned positional table, bicubically resized to other token grids
    cls_token: bool = True           # kept aside by clustering and reconstruction, as in Segmenter
    drop_path: float = 0.0


class ViTSegmenter(nn.Module):
    """A plain ViT segmenter (Segmenter with a linear decoder): stem -> tokens (+ positions, CLS)
    -> ``depth`` blocks -> LN -> per-token linear classifier -> bilinear to the input size.

    ``forward(x, expedite=ExpediteConfig(...))`` runs the same weights with token clustering and
    reconstruction inserted (eqs. 5.1-5.8); ``expedite=None`` is the original model.
    """

    def __init__(self, cfg: ViTSegConfig, *, num_classes: int, in_chans: int):
        check_model_args("ViTSegmenter", num_classes, in_chans)
        if cfg.stem not in ("conv", "patch", "hybrid"):
            raise ValueError(f"ViTSegmenter: stem must be 'conv', 'hybrid' or 'patch', got {cfg.stem!r}")
        if cfg.stem != "patch" and (cfg.patch < 2 or cfg.patch & (cfg.patch - 1)):
            raise ValueError(f"ViTSegmenter: the conv stem halves the map, so patch must be a power of 2, "
                             f"got {cfg.patch}")
        super().__init__()
        self.cfg, self.in_chans, self.num_classes = cfg, in_chans, num_classes
        d = cfg.dim
        if cfg.stem == "patch":
            self.stem = nn.Conv2d(in_chans, d, cfg.patch, stride=cfg.patch)
        else:
            layers, c_in, n = [], in_chans, int(math.log2(cfg.patch))
            for i in range(n):
                c_out = d if i == n - 1 else max(d // 2 ** (n - 1 - i), 16)
                if cfg.stem == "hybrid":            # a small convolutional front end (as DPT's ViT-Hybrid)
                    layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.GELU(),
                               nn.Conv2d(c_out, c_out, 3, padding=1)]
                else:
                    layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)]
                if i < n - 1:
                    layers += [nn.BatchNorm2d(c_out), nn.GELU()]
                c_in = c_out
            self.stem = nn.Sequential(*layers)
        self.pos = nn.Parameter(torch.zeros(1, d, cfg.pos_grid, cfg.pos_grid))
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if cfg.cls_token else None
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(ViTBlock(d, cfg.heads, cfg.mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes) if num_classes else None
        nn.init.trunc_normal_(self.pos, std=0.02)
        if self.cls is not None:
            nn.init.trunc_normal_(self.cls, std=0.02)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C_in, H, W) -> tokens (B, N, C) with positions added, and the token grid."""
        check_images("ViTSegmenter", x, self.in_chans)
        f = self.stem(x)
        grid = tuple(f.shape[-2:])
        pos = self.pos if grid == self.pos.shape[-2:] else F.interpolate(self.pos, size=grid, mode="bicubic",
                                                                         align_corners=False)
        return (f + pos).flatten(2).transpose(1, 2), grid

    def _split(self, tokens):
        return (tokens[:, :1], tokens[:, 1:]) if self.cls is not None else (None, tokens)

    def _join(self, cls, tokens):
        return tokens if cls is None else torch.cat([cls, tokens], dim=1)

    def _run(self, x: torch.Tensor, e: ExpediteConfig | None, trace: list | None = None):
        """Stem and blocks; returns (tokens with CLS, current grid, full grid, reconstruction state
        or None).  With ``trace``, appends every block's patch tokens (B, N or M, C) to it."""
        tokens, grid = self.embed(x)
        b = tokens.shape[0]
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1)
        if e is not None:
            last = e.alpha + (e.beta or 0)
            if not 1 <= e.alpha <= len(self.blocks) or last > len(self.blocks):
                raise ValueError(f"expedite: alpha={e.alpha}, beta={e.beta} do not fit {len(self.blocks)} blocks")
        cur, saved = grid, None
        for i, blk in enumerate(self.blocks, start=1):
            tokens = blk(tokens)
            if e is not None and i == e.alpha:                              # cluster, eqs. (5.1)-(5.4)
                cls, x_a = self._split(tokens)
                c_a, saved = reduce_tokens(x_a, grid, e)
                tokens, cur = self._join(cls, c_a), e.reduced_grid(grid)
            if e is not None and e.beta is not None and i == e.alpha + e.beta:   # reconstruct, (5.6)-(5.8)
                cls, c_hat = self._split(tokens)
                tokens, cur, saved = self._join(cls, restore_tokens(c_hat, saved, e)), grid, None
            if trace is not None:
                trace.append(self._split(tokens)[1])
        return tokens, cur, grid, saved

    def block_outputs(self, x: torch.Tensor, expedite: ExpediteConfig | None = None) -> list[torch.Tensor]:
        """The patch tokens after every block (CLS dropped): (B, N, C) on the full grid, (B, M, C)
        between clustering and reconstruction."""
        trace: list = []
        self._run(x, expedite, trace)
        return trace

    def forward(self, x: torch.Tensor, expedite: ExpediteConfig | None = None) -> torch.Tensor:
        e = expedite
        tokens, cur, grid, saved = self._run(x, e)
        b = tokens.shape[0]
        feats = self.norm(self._split(tokens)[1])                           # (B, N or M, C)
        if self.head is None:
            return feats.transpose(1, 2).reshape(b, -1, *cur)
        logits = self.head(feats)                                           # (B, N or M, K)
        if saved is not None:                                               # Segmenter: reconstruct the logits
            logits = restore_tokens(logits, saved, e)
        logits = logits.transpose(1, 2).reshape(b, -1, *grid)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class Expedited(nn.Module):
    """A trained :class:`ViTSegmenter` that always runs with one :class:`ExpediteConfig`: what the
    training engine's ``evaluate`` and the benchmarks call.  Shares (does not copy) the weights."""

    def __init__(self, model: ViTSegmenter, expedite: ExpediteConfig | None):
        super().__init__()
        self.model, self.expedite = model, expedite
        self.train(model.training)       # mirror the model's mode: a caller restoring "our" mode must not
                                         # flip the model to training (BatchNorm would then update its stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, expedite=self.expedite)


def vit_macs(cfg: ViTSegConfig, grid: tuple[int, int], expedite: ExpediteConfig | None = None,
             num_classes: int = 11) -> dict[str, int]:
    """Multiply-accumulates of the transformer blocks, clustering, reconstruction and head of a
    :class:`ViTSegmenter` on an H x W token grid (the stem and the final resize left out).

    A block on n tokens (CLS included) of width C costs (4 + 2 r) n C^2 (qkv 3, proj 1, MLP 2r)
    plus 2 n^2 C (Q K^T and A V): 12 n C^2 + 2 n^2 C at r = 4.  Clustering costs kappa E-steps and
    M-steps over the allowed pairs (dense: every N x M pair, as the official code; local: the
    lambda^2 candidates), 2 C MACs per pair and iteration; reconstruction N M C for the distances
    plus N k C' for the weighted sum."""
    n = grid[0] * grid[1]
    c, cls = cfg.dim, int(cfg.cls_token)

    def block(tokens):
        return int((4 + 2 * cfg.mlp_ratio) * tokens * c * c + 2 * tokens * tokens * c)

    out = {"blocks": 0, "clustering": 0, "reconstruction": 0, "head": 0}
    cur = n
    e = expedite
    for i in range(1, cfg.depth + 1):
        out["blocks"] += block(cur + cls)
        if e is not None and i == e.alpha:
            m = e.clusters[0] * e.clusters[1]
            pairs = n * m if e.impl == "dense" else n * min(e.lam * e.lam, m)
            out["clustering"] += 2 * e.iters * pairs * c
            cur = m
        if e is not None and e.beta is not None and i == e.alpha + e.beta:
            out["reconstruction"] += n * cur * c + n * min(e.k, cur) * c
            cur = n
    out["head"] = cur * c * num_classes
    if e is not None and cur != n:                                       # Segmenter: logits reconstructed
        out["reconstruction"] += n * cur * c + n * min(e.k, cur) * num_classes
    out["total"] = sum(out.values())
    return out


EVAL_CANVAS = 128        # chapter 05's study scenes: 4x the training area, digits at the training scale


def study_scenes(config: SceneConfig, canvas: int = EVAL_CANVAS) -> SceneConfig:
    """The scenes the expedite study runs on: ``config``'s digits (same sizes, intensities,
    background) on a ``canvas`` x ``canvas`` image, with the digit count scaled by the area ratio
    so the scenes are as busy as the training ones, and 2/5 of the validation and test scenes
    (each holds ``area`` times the pixels).  A model with a stride-4 stem sees a (canvas / 4)^2
    token grid: where attention dominates the cost."""
    area = (canvas / config.canvas) ** 2
    lo, hi = config.digits_per_scene
    return dataclasses.replace(config, canvas=canvas, digits_per_scene=(max(1, round(lo * area)), round(hi * area)),
                               num_val=max(1, config.num_val * 2 // 5), num_test=max(1, config.num_test * 2 // 5))


def paper_placement(cfg: ViTSegConfig, grid: tuple[int, int], **kw) -> ExpediteConfig:
    """The official Segmenter ADE20K default scaled to this model: cluster after block
    alpha = round(10 / 24 L) into h x w with h w / (H W) = 28^2 / 40^2 (each side x 0.7)."""
    alpha = max(1, round(10 / 24 * cfg.depth))
    clusters = tuple(max(1, round(s * 28 / 40)) for s in grid)
    return ExpediteConfig(alpha=alpha, clusters=clusters, **kw)


# ============================================================================ the chapter's study
T_GRID = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)     # inverse temperatures tried on validation scenes


def textbook_budget(budget: Budget) -> Budget:
    """The chapter's training budget: 80% of the profile's steps (the main run stays under 4 min on
    2 CPU cores), evaluating the validation split four times."""
    steps = max(2, round(0.8 * budget.steps))
    return budget.replace(steps=steps, warmup_steps=min(budget.warmup_steps, steps // 10),
                          eval_every=max(1, steps // 4) if budget.eval_every else 0)


def miou_of(model: ViTSegmenter, dataset, expedite: ExpediteConfig | None, batch_size: int = 50) -> float:
    """Test (or validation) mIoU of the trained ``model`` run with ``expedite``, weights untouched."""
    from ..train.evaluate import evaluate
    return evaluate(Expedited(model, expedite), dataset, model.num_classes, batch_size=batch_size).miou


def choose_t(model: ViTSegmenter, val_set, placement: ExpediteConfig, grid=T_GRID) -> tuple[float, dict]:
    """The inverse temperature t (clustering and reconstruction share it) that maximises
    validation mIoU at ``placement``; returns (t, {t: mIoU}).  t = 0.02 is tuned for ViT-L's
    feature norms: squared distances scale with them, so a smaller model needs its own t."""
    scores = {t: miou_of(model, val_set, dataclasses.replace(placement, t=t)) for t in grid}
    return max(scores, key=scores.get), scores


def study_key(model: ViTSegmenter, budget: Budget, scenes: SceneConfig) -> str:
    """What a stored seed of chapter 05's claims depends on: model config, budget, study scenes."""
    import hashlib
    text = repr((model.cfg, budget, scenes, T_GRID))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def claim_arms(placement: ExpediteConfig) -> dict[str, ExpediteConfig | None]:
    """The single-change arms of chapter 05's claims, all at ``placement``'s alpha and h x w."""
    r = dataclasses.replace
    return {"original": None, "expedited": placement,
            "pooling + bilinear": r(placement, reduce="pool", restore="bilinear"),
            "clustering + bilinear": r(placement, restore="bilinear"),
            "clustering + naive unpooling": r(placement, restore="unpool"),
            "L1 weights (paper)": r(placement, norm="l1"),
            "t = 0.02 (official)": r(placement, t=0.02)}


VARIANTS = {
    # A plain ViT for DigitScenes on 2 CPU cores: a hybrid conv stem to stride 4 (a 16 x 16 token
    # grid at the 64 x 64 training size, 32 x 32 on chapter 05's 128 x 128 study scenes, where
    # attention is ~3/4 of every block), 8 blocks of width 64, 2 heads.
    "textbook": ViTSegConfig(dim=64, heads=2, stem="hybrid"),
}

register_variants("vit_seg", paper="expedite", model_cls=ViTSegmenter, variants=VARIANTS, title="ViT segmenter")
