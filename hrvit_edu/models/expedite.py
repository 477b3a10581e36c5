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

from ..nn import DropPath
from ..nn.checks import check_images, check_model_args
from ..registry import register_variants

NORMS = ("l2", "l1")


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


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ============================================================================ geometry
def initial_cells(grid: tuple[int, int], clusters: tuple[int, int], device=None) -> torch.Tensor:
    """l(i) of eq. (5.2): the h x w cell of every token of the H x W grid, (N,) int64, row-major.

    Token (y, x) gets cell (floor(y h / H), floor(x w / W)): what nearest resizing of the h x w
    index image to H x W gives (``F.interpolate(mode="nearest")``)."""
    (hh, ww), (h, w) = grid, clusters
    if h > hh or w > ww:
        raise ValueError(f"a {h}x{w} cluster grid is finer than the {hh}x{ww} token grid")
    u = torch.arange(hh, device=device) * h // hh
    v = torch.arange(ww, device=device) * w // ww
    return (u[:, None] * w + v[None, :]).flatten()


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


def squared_distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """D_ij = ||x_i - c_j||^2 = ||x_i||^2 + ||c_j||^2 - 2 x_i . c_j for x (B, N, C), c (B, M, C),
    clamped at 0 (the expansion can round below it); (B, N, M) in x's dtype."""
    d = (x * x).sum(-1, keepdim=True) + (c * c).sum(-1)[:, None, :] - 2 * x @ c.transpose(1, 2)
    return d.clamp_min(0)


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


def _local_em(x: torch.Tensor, c: torch.Tensor, cells: torch.Tensor, clusters: tuple[int, int], lam: int,
              t: float, iters: int) -> torch.Tensor:
    """(5.3)-(5.4) touching only each token's lambda^2 candidate centres: O(N lambda^2 C) per
    iteration instead of the dense O(N M C).

    The candidates of a cell are ``F.unfold`` of the centre map (a gather; slots off the grid are
    masked), and the M-step sends every token's weighted features back to the centres with
    ``F.fold``, unfold's adjoint (a scatter-add), after summing them per cell with one
    ``index_add_`` over the tokens."""
    (h, w), r, k2 = clusters, lam // 2, lam * lam
    b, n, ch = x.shape
    m = h * w
    on_grid = F.unfold(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device), lam, padding=r)[0] > 0  # (k2, M)
    valid = on_grid.t()[cells]                                                      # (N, k2)
    for _ in range(iters):
        cand = F.unfold(c.transpose(1, 2).reshape(b, ch, h, w), lam, padding=r)    # (B, C k2, M)
        cand = cand.reshape(b, ch, k2, m).permute(0, 3, 2, 1)[:, cells]             # (B, N, k2, C)
        d = ((x[:, :, None, :] - cand) ** 2).sum(-1)                                # (B, N, k2)
        q = (-t * d).masked_fill(~valid, float("-inf")).softmax(dim=-1)             # (B, N, k2)
        contrib = torch.cat([q[..., None] * x[:, :, None, :], q[..., None]], dim=-1)   # (B, N, k2, C + 1)
        per_cell = x.new_zeros(b, m, k2, ch + 1).index_add_(1, cells, contrib)    # (B, M, k2, C + 1)
        sums = F.fold(per_cell.permute(0, 3, 2, 1).reshape(b, (ch + 1) * k2, m), (h, w), lam, padding=r)
        sums = sums.flatten(2).transpose(1, 2)                                      # (B, M, C + 1)
        c = sums[..., :ch] / sums[..., ch:].clamp_min(1e-16)
    return c


def token_clustering(x: torch.Tensor, grid: tuple[int, int], clusters: tuple[int, int], *, lam: int = 5,
                     iters: int = 5, t: float | None = 0.02, tau: float | None = None,
                     return_assignments: bool = False, impl: str = "dense"):
    """Eqs. (5.1)-(5.4): (B, N, C) tokens on ``grid`` = (H, W) -> (B, h w, C) centres.

    ``t`` multiplies the distance (official Segmenter code, default 0.02); pass ``tau`` instead to
    divide by it (the DINO port's convention, tau = 1 / t).  ``iters`` = kappa, ``lam`` = lambda.
    ``impl="dense"`` is the official formulation (all N x M distances, the disallowed ones
    masked); ``impl="local"`` computes the same centres from each token's lambda^2 candidates
    only (:func:`_local_em`).  With ``return_assignments`` (dense only), also returns the last
    Q (B, N, M) of (5.3), the one the returned centres were averaged with.
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
    xf = x.to(_work_dtype(x))
    c = avgpool_tokens(xf, (hh, ww), (h, w))
    if impl == "local":
        return _local_em(xf, c, initial_cells((hh, ww), (h, w), x.device), (h, w), lam, t, iters).to(x.dtype)
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
    d = squared_distances(x_a.to(_work_dtype(x_a)), c_a.to(_work_dtype(x_a)))
    if stabilise:
        d = d - d.amin(dim=-1, keepdim=True)
    wgt = torch.exp(-t * d)
    kth = wgt.topk(min(k, wgt.shape[-1]), dim=-1).values[..., -1:]
    wgt = torch.where(wgt >= kth, wgt, torch.zeros_like(wgt))               # ties at the k-th kept
    if norm == "l2":
        return F.normalize(wgt, p=2, dim=-1, eps=1e-12)
    return wgt / wgt.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def token_reconstruction(x_a: torch.Tensor, c_a: torch.Tensor, c_hat: torch.Tensor, *, t: float = 0.02,
                         k: int = 20, norm: str = "l2", stabilise: bool = True) -> torch.Tensor:
    """Eq. (5.8): N tokens (B, N, C') from the M refined centres ``c_hat`` (B, M, C'), with the
    weights of (5.6)-(5.7) computed from the layer-alpha ``x_a`` and ``c_a``."""
    _tokens(c_hat, "c_hat")
    if c_hat.shape[:2] != c_a.shape[:2]:
        raise ValueError(f"c_hat {tuple(c_hat.shape)} must hold the same (B, M) centres as c_a {tuple(c_a.shape)}")
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
    return squared_distances(x_a.to(_work_dtype(x_a)), c_a.to(_work_dtype(x_a))).argmin(dim=-1)


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
    """
    alpha: int
    clusters: tuple[int, int]
    beta: int | None = None
    lam: int = 5
    iters: int = 5
    t: float = 0.02
    k: int = 20
    norm: str = "l2"


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
        if cfg.stem not in ("conv", "patch"):
            raise ValueError(f"ViTSegmenter: stem must be 'conv' or 'patch', got {cfg.stem!r}")
        if cfg.stem == "conv" and (cfg.patch < 2 or cfg.patch & (cfg.patch - 1)):
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

    def forward(self, x: torch.Tensor, expedite: ExpediteConfig | None = None) -> torch.Tensor:
        tokens, grid = self.embed(x)
        b = tokens.shape[0]
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1)
        e = expedite
        if e is not None:
            last = e.alpha + (e.beta or 0)
            if not 1 <= e.alpha <= len(self.blocks) or last > len(self.blocks):
                raise ValueError(f"expedite: alpha={e.alpha}, beta={e.beta} do not fit {len(self.blocks)} blocks")
        cur, saved = grid, None
        for i, blk in enumerate(self.blocks, start=1):
            tokens = blk(tokens)
            if e is not None and i == e.alpha:                              # cluster, eqs. (5.1)-(5.4)
                cls, x_a = self._split(tokens)
                c_a = token_clustering(x_a, grid, e.clusters, lam=e.lam, iters=e.iters, t=e.t)
                tokens, cur, saved = self._join(cls, c_a), tuple(e.clusters), (x_a, c_a)
            if e is not None and e.beta is not None and i == e.alpha + e.beta:   # reconstruct, (5.6)-(5.8)
                cls, c_hat = self._split(tokens)
                tokens = self._join(cls, token_reconstruction(*saved, c_hat, t=e.t, k=e.k, norm=e.norm))
                cur, saved = grid, None
        feats = self.norm(self._split(tokens)[1])                           # (B, N or M, C)
        if self.head is None:
            return feats.transpose(1, 2).reshape(b, -1, *cur)
        logits = self.head(feats)                                           # (B, N or M, K)
        if saved is not None:                                               # Segmenter: reconstruct the logits
            logits = token_reconstruction(*saved, logits, t=e.t, k=e.k, norm=e.norm)
        logits = logits.transpose(1, 2).reshape(b, -1, *grid)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


VARIANTS = {
    # A plain ViT for DigitScenes (64 x 64) on 2 CPU cores: patch stride 4 (a 16 x 16 token grid,
    # so attention is the dominant cost), conv stem, 8 blocks of width 96.
    "textbook": ViTSegConfig(),
}

register_variants("vit_seg", paper="expedite", model_cls=ViTSegmenter, variants=VARIANTS, title="ViT segmenter")
