"""Pictures of a run: its curves, and what the trained model predicts."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from .evaluate import predict


def plot_history(history, title: str | None = None):
    """Loss (smoothed) and validation mIoU against the step.  Returns the figure."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 2.8))
    loss = torch.tensor(history.loss)
    k = max(1, len(loss) // 50)
    smooth = F.avg_pool1d(loss[None, None], k, 1)[0, 0] if len(loss) >= k else loss
    a.plot(history.steps, history.loss, alpha=0.3, lw=0.8)
    a.plot(history.steps[k - 1:], smooth.tolist(), lw=1.5)
    a.set(xlabel="step", ylabel="train loss", yscale="log")
    b.plot(history.eval_steps, history.val_miou, marker="o")
    if history.test:
        b.axhline(history.test_miou, ls="--", c="k", lw=0.8, label=f"test {history.test_miou:.3f}")
        b.legend(fontsize=8)
    b.set(xlabel="step", ylabel="val mIoU", ylim=(0, 1))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def prediction_gallery(model: nn.Module, dataset: Dataset, n: int = 4, title: str | None = None):
    """image | ground truth | prediction for the first ``n`` samples of ``dataset``."""
    from torch.utils.data import default_collate

    from ..data.viz import show_predictions

    device = next(model.parameters()).device
    x, y = default_collate([dataset[i] for i in range(n)])
    return show_predictions(x, y, predict(model, x.to(device)).cpu(), n=n, title=title)
