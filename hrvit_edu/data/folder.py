"""Real segmentation data in an ADE20K-style folder, so every model in the book can train on it.

Layout (file stems pair an image with its label map)::

    root/images/<stem>.jpg          RGB image (also .jpeg / .png)
    root/annotations/<stem>.png     uint8 class index per pixel; 255 = ignore

ADE20K's own annotation PNGs store 0 = "other" and 1..150 = classes; pass
``reduce_zero_label=True`` to map them to 255 and 0..149 as mmseg does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from .constants import IGNORE_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _open(path: Path):
    """Open and fully decode an image; a truncated or unreadable file names itself."""
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
        return img
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        raise ValueError(f"{path}: cannot read this image ({type(e).__name__}: {e})") from e


class SegmentationFolder(Dataset):
    """``SegmentationFolder(root, num_classes, size=(H, W))[i] -> (image (3, H, W), mask (H, W))``.

    Images are resized bilinearly and scaled to [0, 1]; masks nearest-neighbour.  Label values
    outside ``[0, num_classes)`` other than 255 raise a ``ValueError`` naming the file.
    """

    def __init__(self, root, num_classes: int, size: tuple[int, int] = (256, 256),
                 reduce_zero_label: bool = False):
        from PIL import Image  # noqa: F401  (pillow ships with matplotlib)

        root = Path(root)
        img_dir, ann_dir = root / "images", root / "annotations"
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"expected folder {d} (layout: images/*.jpg, annotations/*.png)")
        images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        labels = {p.stem: p for p in sorted(ann_dir.iterdir()) if p.suffix.lower() == ".png"}
        only_img, only_lab = sorted(set(images) - set(labels)), sorted(set(labels) - set(images))
        if only_img or only_lab:
            raise ValueError(
                f"images and annotations in {root} do not pair up: "
                f"{len(only_img)} image(s) without a label {only_img[:3]}, "
                f"{len(only_lab)} label(s) without an image {only_lab[:3]}")
        if not images:
            raise ValueError(f"no images found in {img_dir}")
        self.stems = sorted(images)
        self.images, self.labels = images, labels
        self.num_classes, self.size = int(num_classes), tuple(size)
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int):
        stem = self.stems[index]
        img = np.asarray(_open(self.images[stem]).convert("RGB"), dtype=np.float32) / 255.0
        lab = np.asarray(_open(self.labels[stem]))
        if lab.ndim != 2:
            raise ValueError(f"{self.labels[stem].name}: label map must be single-channel, got shape {lab.shape}")
        if lab.shape != img.shape[:2]:
            raise ValueError(f"{stem}: image {img.shape[:2]} and label {lab.shape} sizes differ")
        lab = lab.astype(np.int64)
        if self.reduce_zero_label:
            lab = np.where(lab == 0, IGNORE_INDEX, lab - 1)
            lab[lab == IGNORE_INDEX - 1] = IGNORE_INDEX
        bad = (lab != IGNORE_INDEX) & ((lab < 0) | (lab >= self.num_classes))
        if bad.any():
            raise ValueError(f"{self.labels[stem].name}: label values {np.unique(lab[bad])[:5].tolist()} "
                             f"outside [0, {self.num_classes}) and not the ignore index 255")
        image = torch.from_numpy(img).permute(2, 0, 1)[None]
        mask = torch.from_numpy(lab)[None, None].float()
        image = F.interpolate(image, size=self.size, mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(mask, size=self.size, mode="nearest")[0, 0].long()
        return image, mask

    def batch(self, indices):
        return default_collate([self[int(i)] for i in indices])
