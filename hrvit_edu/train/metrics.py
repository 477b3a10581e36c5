"""Segmentation metrics, all read off one confusion matrix.

With ``M[t, p]`` = number of pixels of true class ``t`` predicted as ``p`` (ignored pixels
dropped before counting):

    pixel accuracy = sum_c M[c, c] / sum_{t,p} M[t, p]
    IoU_c          = M[c, c] / (sum_p M[c, p] + sum_t M[t, c] - M[c, c])
    mIoU           = mean of IoU_c over classes that occur in the labels or the predictions

A class absent from both labels and predictions has an undefined IoU (0/0); it is reported as
NaN and left out of the mean, as mmseg does.
"""
from __future__ import annotations

import dataclasses

import torch

from ..data.constants import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """pred, target: integer tensors of the same shape -> (K, K) int64 counts, rows = truth."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
    if pred.dtype.is_floating_point or target.dtype.is_floating_point:
        raise TypeError("confusion_matrix expects class indices (integer tensors); "
                        "take logits.argmax(1) first")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target holds labels outside [0, {num_classes}) that are not the ignore index")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"pred holds labels outside [0, {num_classes})")
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


@dataclasses.dataclass
class SegMetrics:
    miou: float
    pixel_acc: float
    iou: list[float]          # per class, NaN where undefined

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def metrics_from_confusion(cm: torch.Tensor) -> SegMetrics:
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    miou = iou[valid].mean().item() if valid.any() else float("nan")
    total = cm.sum()
    acc = (tp.sum() / total).item() if total > 0 else float("nan")
    return SegMetrics(miou=miou, pixel_acc=acc, iou=iou.tolist())


def boundary_mask(target: torch.Tensor, ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood holds another label (the thin band where fine detail lives).

    target (B, H, W) integer -> bool (B, H, W).  Ignored pixels are never boundary pixels.
    """
    if target.ndim != 3:
        raise ValueError(f"boundary_mask expects (B, H, W) labels, got {tuple(target.shape)}")
    t = target.long()[:, None].float()
    pad = torch.nn.functional.pad(t, (1, 1, 1, 1), mode="replicate")
    hi = torch.nn.functional.max_pool2d(pad, 3, 1)
    lo = -torch.nn.functional.max_pool2d(-pad, 3, 1)
    edge = (hi != lo)[:, 0]
    if ignore_index is not None:
        edge &= target != ignore_index
    return edge
