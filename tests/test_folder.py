import numpy as np
import pytest
import torch
from PIL import Image

from hrvit_edu.data import SegmentationFolder


def _write(root, stems, label_stems=None, size=(20, 30), labels=None):
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s in stems:
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(root / "images" / f"{s}.jpg")
    for s in (label_stems if label_stems is not None else stems):
        lab = labels if labels is not None else rng.integers(0, 3, size, dtype=np.uint8)
        lab = lab.copy()
        lab[0, :] = 255
        Image.fromarray(lab).save(root / "annotations" / f"{s}.png")


def test_loads_pairs_and_keeps_ignore(tmp_path):
    _write(tmp_path, ["a", "b", "c"])
    ds = SegmentationFolder(tmp_path, num_classes=3, size=(16, 24))
    assert len(ds) == 3 and ds.stems == ["a", "b", "c"]
    x, y = ds[1]
    assert x.shape == (3, 16, 24) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (16, 24) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 1, 2, 255} and (y == 255).any()
    xb, yb = ds.batch([0, 2])
    assert xb.shape == (2, 3, 16, 24) and yb.shape == (2, 16, 24)


def test_mismatched_files_are_refused(tmp_path):
    _write(tmp_path, ["a", "b"], label_stems=["a", "z"])
    with pytest.raises(ValueError, match="do not pair up"):
        SegmentationFolder(tmp_path, num_classes=3)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations"):
        (tmp_path / "images").mkdir()
        SegmentationFolder(tmp_path, num_classes=3)


def test_out_of_range_labels_are_refused(tmp_path):
    _write(tmp_path, ["a"], labels=np.full((20, 30), 7, np.uint8))
    with pytest.raises(ValueError, match="outside"):
        SegmentationFolder(tmp_path, num_classes=3)[0]


def test_reduce_zero_label(tmp_path):
    lab = np.zeros((20, 30), np.uint8)
    lab[5:, :] = 2
    _write(tmp_path, ["a"], labels=lab)
    _, y = SegmentationFolder(tmp_path, num_classes=3, size=(20, 30), reduce_zero_label=True)[0]
    assert set(y.unique().tolist()) == {1, 255}
