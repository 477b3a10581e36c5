"""Attention inside windows with a key-padding mask: HRViT's cross-shaped stripes (and, later,
TransNeXt's length-scaled cosine attention) reduce to this operator.

For a window g with queries Q_g, keys K_g, values V_g (L x d each) of which the first
n_g keys are real and the rest are zero padding:

    S = alpha * Q_g K_g^T + M_g,   M_g[i, j] = 0 if j < n_g else mask_value        (eq. W1)
    O_g = softmax_rows(S) V_g                                                     (eq. W2)

The official HRViT code adds ``mask_value = -100`` (not -inf), so a padded key keeps a weight
of about e^-100 relative to the real ones; ``-inf`` removes it exactly.  Padded *queries* are
computed too and discarded by the caller.

Shapes: q, k, v (G, L, d) with G = batch * windows * heads; valid (G,) int64.
"""
from __future__ import annotations

import torch


def window_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               valid: torch.Tensor, scale: float,
                               mask_value: float = -100.0) -> torch.Tensor:
    """eqs. (W1)-(W2) with torch ops; fp16/bf16 inputs computed in fp32."""
    _check(q, k, v, valid)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = scale * torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2))
    pad = torch.arange(k.shape[1], device=k.device)[None, None, :] >= valid[:, None, None]
    if mask_value == float("-inf"):
        s = s.masked_fill(pad, float("-inf"))
    else:
        s = s + pad.to(acc) * mask_value
    return torch.matmul(torch.softmax(s, -1), v.to(acc)).to(q.dtype)


def _check(q, k, v, valid):
    if q.ndim != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be (G, L, d); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if valid.shape != (q.shape[0],) or valid.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"valid must be an int tensor of shape ({q.shape[0]},), got "
                         f"{tuple(valid.shape)} {valid.dtype}")
