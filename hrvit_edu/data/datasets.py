"""Torch ``Dataset`` views of DigitScenes with seeded, label-consistent augmentation.

Augmentation is a random similarity transform plus an intensity gain, applied identically to
the image (bilinear) and to the label map (nearest; pixels that come from outside the canvas
become background).  Horizontal flips are deliberately absent: a mirrored 2 is not a 2.

Every sample's randomness is a pure function of ``(seed, epoch, index)``, so a sample is the
same whichever worker, process or resumed run asks for it.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from .digitscenes import BACKGROUND, SceneConfig, load_scenes


@dataclasses.dataclass(frozen=True)
class Augment:
    """``scale`` and ``intensity`` are multiplicative ranges; ``translate`` a fraction of the side."""

    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.1
    intensity: tuple[float, float] = (0.8, 1.2)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator):
        """image (C, H, W) float, mask (H, W) long -> augmented copies, same shapes."""
        r = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * r[0]
        tx, ty = ((2 * r[1] - 1) * 2 * self.translate, (2 * r[2] - 1) * 2 * self.translate)
        gain = self.intensity[0] + (self.intensity[1] - self.intensity[0]) * r[3]
        # affine_grid maps output coords to input coords: zoom in by s means sampling 1/s.
        theta = torch.tensor([[1 / s, 0.0, tx], [0.0, 1 / s, ty]], dtype=image.dtype)[None]
        grid = F.affine_grid(theta, (1, *image.shape), align_corners=False)
        img = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border",
                            align_corners=False)[0]
        # Shift labels by +1 so zero padding marks "outside" and can become background.
        lab = F.grid_sample((mask + 1).to(image.dtype)[None, None], grid, mode="nearest",
                            padding_mode="zeros", align_corners=False)[0, 0].long() - 1
        lab[lab < 0] = BACKGROUND
        return (img * gain).clamp_(0, 1), lab


@dataclasses.dataclass
class DataBundle:
    """What the training engine trains and evaluates on; datasets return ``(image, mask)``."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    ignore_index: int = 255


class DigitScenes(Dataset):
    """``DigitScenes(split, config)[i] -> (image (1, H, W) float32, mask (H, W) int64)``."""

    def __init__(self, split: str = "train", config: SceneConfig | None = None,
                 augment: Augment | None = None, seed: int = 0, cache_dir=None):
        self.config = config or SceneConfig()
        self.split = split
        self.scenes = load_scenes(self.config, split, cache_dir=cache_dir)
        self.images = torch.from_numpy(self.scenes.images)
        self.masks = torch.from_numpy(self.scenes.masks)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.num_classes = 11
        self.ignore_index = 255

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, mask = self.images[index], self.masks[index].long()
        if self.augment is None:
            return image, mask
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index))
        return self.augment(image, mask, gen)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack several samples (with augmentation if set) into one batch."""
        return default_collate([self[int(i)] for i in indices])


def rescaled_test_set(config: SceneConfig | None = None, factor: float = 1.0, num_test: int | None = None,
                      seed: int = 0, cache_dir=None) -> "DigitScenes":
    """The test split of ``config`` rendered at ``factor`` x its resolution: the canvas (rounded to
    a multiple of 16) and the glyph sizes scale together, so the same kind of scene is seen at
    another resolution (multi-scale inference: train at one size, evaluate at several)."""
    config = config or SceneConfig()
    canvas = max(32, int(round(config.canvas * factor / 16)) * 16)
    f = canvas / config.canvas
    scaled = dataclasses.replace(config, canvas=canvas, scale_range=tuple(s * f for s in config.scale_range),
                                 num_test=num_test or config.num_test)
    return DigitScenes("test", scaled, None, seed, cache_dir)


def digitscenes_bundle(config: SceneConfig | None = None, augment: Augment | None = Augment(),
                       seed: int = 0, cache_dir=None) -> DataBundle:
    """Train (augmented) / val / test DigitScenes splits of one config, ready for ``fit``."""
    config = config or SceneConfig()
    return DataBundle(train=DigitScenes("train", config, augment, seed, cache_dir),
                      val=DigitScenes("val", config, None, seed, cache_dir),
                      test=DigitScenes("test", config, None, seed, cache_dir),
                      num_classes=11, ignore_index=255)
