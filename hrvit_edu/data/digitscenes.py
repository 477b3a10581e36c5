"""DigitScenes: the book's embedded dense-prediction dataset.

Every scene is a ``canvas x canvas`` grey image with a few real handwritten digits
(scikit-learn's bundled 8x8 UCI digits, 1,797 samples) pasted at random positions, scales and
intensities over a smooth textured background with pixel noise.  The label map gives each pixel
its digit class ``0..9`` or background ``10``.

Generation is deterministic in ``SceneConfig.seed`` and the split name.  Train / val / test
draw their digits from *disjoint* pools of source samples, so no test digit was ever seen in
training (``Scenes.instances['source']`` records which sample each pasted digit came from).

Pasting rule for a digit glyph ``g in [0, 1]^{s x s}`` (bilinearly upscaled from 8x8) with
intensity ``a``:

    x <- (1 - g) * x + g * a          (alpha blending, eq. D1)
    y[g > 1/2] <- class               (label of the stroke pixels, eq. D2)

Digits are placed by rejection sampling so that a new digit's box overlaps an earlier one by at
most ``max_overlap`` of its area ("limited occlusion"); later digits are drawn on top.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_write, read_or_explain

NUM_CLASSES = 11          # ten digits + background
BACKGROUND = 10
CLASS_NAMES = tuple(str(i) for i in range(10)) + ("background",)
SPLITS = ("train", "val", "test")
_ATTEMPTS = 20   # placement tries per digit before it is dropped

INSTANCE_DTYPE = np.dtype([("scene", np.int32), ("cls", np.int8), ("y", np.int16),
                           ("x", np.int16), ("size", np.int16), ("source", np.int16)])


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Everything that determines a DigitScenes split.  Two equal configs give equal scenes."""

    canvas: int = 64                          # H = W of every scene (multiple of 16)
    digits_per_scene: tuple[int, int] = (2, 5)   # inclusive range
    scale_range: tuple[float, float] = (2.0, 3.5)  # glyph side = 8 * scale pixels
    intensity_range: tuple[float, float] = (0.55, 1.0)
    background_level: float = 0.35           # texture amplitude (digits stay brighter on average)
    noise_std: float = 0.05
    max_overlap: float = 0.2                 # fraction of a new digit's box that may be covered
    num_train: int = 10_000
    num_val: int = 500
    num_test: int = 500
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)   # of the 1,797 source digits
    seed: int = 0

    def __post_init__(self):
        c = self.canvas
        if not isinstance(c, int) or isinstance(c, bool):
            raise TypeError(f"canvas must be an int, got {type(c).__name__}")
        lo, hi = self.scale_range
        if not 0.5 <= lo <= hi:
            raise ValueError(f"scale_range must satisfy 0.5 <= lo <= hi, got {self.scale_range}")
        glyph = int(round(8 * hi))
        if c % 16 != 0 or c < max(32, glyph + 8):
            raise ValueError(
                f"canvas={c} is not supported: it must be a multiple of 16 (the backbones "
                f"downsample by up to 32 with padding) and at least max(32, largest digit "
                f"{glyph} px + 8) so a digit fits with a margin")
        dmin, dmax = self.digits_per_scene
        if not 1 <= dmin <= dmax:
            raise ValueError(f"digits_per_scene must satisfy 1 <= min <= max, got {self.digits_per_scene}")
        if not 0.0 <= self.max_overlap <= 1.0:
            raise ValueError(f"max_overlap must be in [0, 1], got {self.max_overlap}")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) <= 0:
            raise ValueError(f"split_fractions must be positive and sum to 1, got {self.split_fractions}")
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def num_scenes(self, split: str) -> int:
        _check_split(split)
        return getattr(self, f"num_{split}")

    def key(self) -> str:
        """A short stable hash, used to name disk caches."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


@dataclasses.dataclass
class Scenes:
    """A generated split: ``images`` (N, 1, H, W) float32, ``masks`` (N, H, W) uint8, ``instances``."""

    images: np.ndarray
    masks: np.ndarray
    instances: np.ndarray
    config: SceneConfig
    split: str

    def __len__(self) -> int:
        return len(self.images)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


@functools.lru_cache(maxsize=1)
def _source_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def source_pools(config: SceneConfig) -> dict[str, np.ndarray]:
    """Disjoint index sets into the 1,797 source digits, one per split (seeded permutation)."""
    _, targets = _source_digits()
    perm = np.random.default_rng([config.seed, 7]).permutation(len(targets))
    n_train = int(round(config.split_fractions[0] * len(perm)))
    n_val = int(round(config.split_fractions[1] * len(perm)))
    return {"train": np.sort(perm[:n_train]),
            "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}


def _glyph_bank(pool: np.ndarray, sizes: range) -> dict[int, np.ndarray]:
    """Bilinearly upscaled glyphs for every allowed side length: {s: (len(pool), s, s)}."""
    images, _ = _source_digits()
    src = torch.from_numpy(images[pool])[:, None]
    bank = {}
    for s in sizes:
        g = F.interpolate(src, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
        bank[s] = g.clamp_(0, 1).numpy()
    return bank


def _backgrounds(n: int, canvas: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth texture: low-frequency noise (bicubic from 6x6) plus a faint random grating."""
    low = torch.from_numpy(rng.random((n, 1, 6, 6), dtype=np.float32))
    tex = F.interpolate(low, size=(canvas, canvas), mode="bicubic", align_corners=False)[:, 0]
    yy, xx = np.meshgrid(*(np.arange(canvas, dtype=np.float32),) * 2, indexing="ij")
    theta = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
    freq = rng.uniform(0.1, 0.5, size=(n, 1, 1)).astype(np.float32)
    grating = 0.5 + 0.5 * np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy))
    bg = 0.7 * tex.clamp(0, 1).numpy() + 0.3 * grating
    return (level * rng.uniform(0.3, 1.0, size=(n, 1, 1)).astype(np.float32)) * bg


def generate(config: SceneConfig, split: str) -> Scenes:
    """Generate one split from scratch (no cache).  See the module docstring for the rules."""
    _check_split(split)
    n, c = config.num_scenes(split), config.canvas
    images_src, targets = _source_digits()
    pool = source_pools(config)[split]
    sizes = range(int(round(8 * config.scale_range[0])), int(round(8 * config.scale_range[1])) + 1)
    bank = _glyph_bank(pool, sizes)
    rng = np.random.default_rng([config.seed, SPLITS.index(split)])

    images = _backgrounds(n, c, config.background_level, rng)
    masks = np.full((n, c, c), BACKGROUND, dtype=np.uint8)
    dmin, dmax = config.digits_per_scene
    counts = rng.integers(dmin, dmax + 1, size=n)
    # All random draws up front (one vectorised call each): per (scene, slot) the glyph and its
    # intensity, and per (scene, slot, attempt) a uniform triple for side, row and column.
    glyph_idx = rng.integers(len(pool), size=(n, dmax))
    alpha = rng.uniform(*config.intensity_range, size=(n, dmax)).astype(np.float32)
    u = rng.random((n, dmax, _ATTEMPTS, 3))
    side = sizes.start + (u[..., 0] * len(sizes)).astype(np.int64)
    instances = []
    for i in range(n):
        img, msk, boxes = images[i], masks[i], []
        for j in range(counts[i]):
            for t in range(_ATTEMPTS):
                s = int(side[i, j, t])
                y, x = int(u[i, j, t, 1] * (c - s + 1)), int(u[i, j, t, 2] * (c - s + 1))
                if all(_overlap(y, x, s, b) <= config.max_overlap * s * s for b in boxes):
                    break
            else:
                continue   # no room: fewer digits in this scene
            k = int(glyph_idx[i, j])
            g, cls = bank[s][k], targets[pool[k]]
            win = img[y:y + s, x:x + s]
            win *= 1.0 - g
            win += alpha[i, j] * g                  # eq. D1
            msk[y:y + s, x:x + s][g > 0.5] = cls    # eq. D2
            boxes.append((y, x, s))
            instances.append((i, cls, y, x, s, pool[k]))
    images += config.noise_std * rng.standard_normal(images.shape, dtype=np.float32)
    np.clip(images, 0.0, 1.0, out=images)
    return Scenes(images[:, None], masks, np.array(instances, dtype=INSTANCE_DTYPE), config, split)


def _overlap(y: int, x: int, s: int, box: tuple[int, int, int]) -> int:
    by, bx, bs = box
    dy = min(y + s, by + bs) - max(y, by)
    dx = min(x + s, bx + bs) - max(x, bx)
    return max(dy, 0) * max(dx, 0)


# Splits already generated in this process, least recently used first; bounded so that a
# session that touches several large configs (the `full` train split alone is ~655 MB) does not
# keep them all.  The newest split always stays, whatever its size.
MEMORY_CACHE_BYTES = 1 << 30
_MEMORY_CACHE: "collections.OrderedDict[tuple[str, str], Scenes]" = collections.OrderedDict()


def _scenes_bytes(s: Scenes) -> int:
    return s.images.nbytes + s.masks.nbytes + s.instances.nbytes


def _remember(key, scenes: Scenes) -> None:
    _MEMORY_CACHE[key] = scenes
    _MEMORY_CACHE.move_to_end(key)
    while len(_MEMORY_CACHE) > 1 and sum(map(_scenes_bytes, _MEMORY_CACHE.values())) > MEMORY_CACHE_BYTES:
        _MEMORY_CACHE.popitem(last=False)


def _read_npz(path: Path):
    with np.load(path) as z:
        return z["images"], z["masks"], z["instances"]


def _write_npz(scenes: Scenes, tmp: Path) -> None:
    with open(tmp, "wb") as fh:               # a file object: np.savez would append .npz to a name
        np.savez(fh, images=scenes.images, masks=scenes.masks, instances=scenes.instances)


def load_scenes(config: SceneConfig | None = None, split: str = "train",
                cache_dir: str | os.PathLike | None = None) -> Scenes:
    """Return a split, generating it at most once per process.

    ``cache_dir`` (or the ``HRVIT_EDU_CACHE_DIR`` environment variable) additionally keeps an
    ``.npz`` per (config, split) on disk so later processes skip generation.
    """
    config = config or SceneConfig()
    _check_split(split)
    key = (config.key(), split)
    if key in _MEMORY_CACHE:
        _MEMORY_CACHE.move_to_end(key)
        return _MEMORY_CACHE[key]
    cache_dir = cache_dir or os.environ.get("HRVIT_EDU_CACHE_DIR")
    path = Path(cache_dir) / f"digitscenes-{config.key()}-{split}.npz" if cache_dir else None
    if path is not None and path.exists():
        images, masks, instances = read_or_explain(path, _read_npz, "DigitScenes cache")
        scenes = Scenes(images, masks, instances, config, split)
    else:
        scenes = generate(config, split)
        if path is not None:
            atomic_write(path, lambda tmp: _write_npz(scenes, tmp))
    _remember(key, scenes)
    return scenes
