"""The shared training engine and segmentation metrics."""
from ..data.datasets import DataBundle
from .engine import (Budget, History, boundary_accuracy, StepBatchSampler, evaluate, fit, load_checkpoint, lr_factor,
                     model_fingerprint, predict, prediction_gallery, save_checkpoint,
                     segmentation_loss)
from .metrics import SegMetrics, boundary_mask, confusion_matrix, metrics_from_confusion

__all__ = ["DataBundle", "Budget", "History", "boundary_accuracy", "boundary_mask", "StepBatchSampler", "evaluate", "fit",
           "load_checkpoint", "lr_factor", "model_fingerprint", "predict", "prediction_gallery",
           "save_checkpoint", "segmentation_loss", "SegMetrics", "confusion_matrix",
           "metrics_from_confusion"]
