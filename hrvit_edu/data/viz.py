"""Pictures of scenes, label maps and predictions (image | mask | prediction)."""
from __future__ import annotations

import numpy as np
import torch

from .constants import IGNORE_INDEX
from .digitscenes import BACKGROUND

# Ten well-separated colours for the digits, dark grey for background, white for "ignore".
_PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
], dtype=np.float32) / 255.0


def colorize(mask, num_classes: int = 11) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) RGB in [0, 1]; background dark grey, 255 white."""
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.int64)
    palette = np.vstack([_PALETTE, np.linspace(0.2, 0.9, max(num_classes - 10, 0) * 3)
                        .reshape(-1, 3)]) if num_classes > 11 else _PALETTE
    out = np.full(m.shape + (3,), 0.15, dtype=np.float32)
    for c in range(min(len(palette), num_classes)):
        if c != BACKGROUND or num_classes > 11:
            out[m == c] = palette[c % len(palette)]
    out[m == IGNORE_INDEX] = 1.0
    return out


def show_predictions(images, masks, preds=None, n: int = 4, title: str | None = None):
    """Grid with one row per sample: image | ground truth | prediction (if given).

    ``images`` (N, C, H, W), ``masks`` and ``preds`` (N, H, W).  Returns the figure.
    """
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    cols = 2 if preds is None else 3
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    for i in range(n):
        img = images[i].detach().cpu().float()
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
        panels = [img.numpy(), colorize(masks[i])] + ([] if preds is None else [colorize(preds[i])])
        for j, (ax, p) in enumerate(zip(axes[i], panels)):
            ax.imshow(p, cmap="gray" if p.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(("image", "ground truth", "prediction")[j], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
