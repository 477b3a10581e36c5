"""The shared training engine, one module per job:

``budget`` (Budget, lr schedule), ``loop`` (fit), ``evaluate`` (predict, evaluate, boundary
accuracy), ``metrics`` (confusion matrix, mIoU), ``checkpoint`` (save/load), ``cache`` (finished
runs), ``history`` (History), ``plots`` (curves, prediction galleries), ``distributed``.
"""
from ..data.datasets import DataBundle
from .budget import Budget, lr_factor
from .checkpoint import load_checkpoint, model_fingerprint, save_checkpoint
from .evaluate import boundary_accuracy, evaluate, predict
from .history import History
from .loop import StepBatchSampler, fit, segmentation_loss, training_loss
from .metrics import SegMetrics, boundary_mask, confusion_matrix, metrics_from_confusion
from .plots import prediction_gallery

__all__ = ["DataBundle", "Budget", "History", "boundary_accuracy", "boundary_mask", "StepBatchSampler",
           "evaluate", "fit",
           "load_checkpoint", "lr_factor", "model_fingerprint", "predict", "prediction_gallery",
           "save_checkpoint", "segmentation_loss", "training_loss", "SegMetrics", "confusion_matrix",
           "metrics_from_confusion"]
