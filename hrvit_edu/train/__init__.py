"""The shared training engine and segmentation metrics."""
from ..data.datasets import DataBundle
from .engine import (Budget, History, StepBatchSampler, evaluate, fit, load_checkpoint, lr_factor,
                     model_fingerprint, predict, prediction_gallery, save_checkpoint,
                     segmentation_loss)
from .metrics import SegMetrics, confusion_matrix, metrics_from_confusion

__all__ = ["DataBundle", "Budget", "History", "StepBatchSampler", "evaluate", "fit",
           "load_checkpoint", "lr_factor", "model_fingerprint", "predict", "prediction_gallery",
           "save_checkpoint", "segmentation_loss", "SegMetrics", "confusion_matrix",
           "metrics_from_confusion"]
