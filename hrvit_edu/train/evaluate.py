"""Evaluating a segmentation model: predictions, the confusion matrix over a dataset, boundary accuracy."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.constants import IGNORE_INDEX
from .distributed import rank_world
from .metrics import SegMetrics, boundary_mask, confusion_matrix, metrics_from_confusion


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class map (B, H, W) for a batch of images (B, C, H, W)."""
    model.eval()
    logits = model(images)
    if logits.shape[-2:] != images.shape[-2:]:
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(1)


def _batches(dataset: Dataset, batch_size: int, indices=None):
    ds = dataset if indices is None else Subset(dataset, indices)
    return DataLoader(ds, batch_size=batch_size, shuffle=False)       # default_collate stacks


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, ignore_index: int = IGNORE_INDEX,
             batch_size: int = 100, device: torch.device | str | None = None) -> SegMetrics:
    """Metrics over a whole dataset (sharded across ranks and summed under torch.distributed)."""
    rank, world = rank_world()
    device = torch.device(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for x, y in _batches(dataset, batch_size, list(range(rank, len(dataset), world))):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = predict(model, x.to(device)).cpu()
        cm += confusion_matrix(pred, y, num_classes, ignore_index)
    if world > 1:
        dist.all_reduce(cm)
    model.train(was_training)
    return metrics_from_confusion(cm)


@torch.no_grad()
def boundary_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 100,
                      ignore_index: int = IGNORE_INDEX) -> float:
    """Pixel accuracy restricted to :func:`boundary_mask` pixels (digit outlines, thin strokes)."""
    device = next(model.parameters()).device
    hit = total = 0
    for x, y in _batches(dataset, batch_size):
        edge = boundary_mask(y, ignore_index)
        pred = predict(model, x.to(device)).cpu()
        hit += (pred[edge] == y[edge]).sum().item()
        total += edge.sum().item()
    return hit / max(total, 1)


TEST_SCALES = (0.75, 1.0, 1.5, 2.0)        # resolution robustness: test canvases 48, 64, 96, 128 px
SCALE_TEST_IMAGES = 200


def scale_metric(factor: float) -> str:
    """The record name of the test mIoU at ``factor`` x the training resolution."""
    return f"test_miou_x{factor:g}"


def multiscale_miou(model: nn.Module, scenes=None, factors=TEST_SCALES,
                    num_test: int = SCALE_TEST_IMAGES) -> dict[str, float]:
    """Test mIoU on DigitScenes re-rendered at each of ``factors`` x the training resolution
    (canvas and glyphs scale together: the same scenes, seen at another size), as
    ``{scale_metric(f): mIoU}``; the first ``num_test`` test scenes of ``scenes`` (default: the
    active profile's)."""
    from ..data import rescaled_test_set
    from ..profiles import get_profile

    scenes = scenes or get_profile().scenes
    return {scale_metric(f): evaluate(model, rescaled_test_set(scenes, f, num_test=min(num_test, scenes.num_test)),
                                      11).miou
            for f in factors}
