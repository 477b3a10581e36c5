import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hrvit_edu.train import confusion_matrix, metrics_from_confusion


def test_hand_example():
    target = torch.tensor([[0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 0]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    m = metrics_from_confusion(cm)
    assert m.iou[0] == pytest.approx(0.5) and m.iou[1] == pytest.approx(0.5)
    assert math.isnan(m.iou[2])                  # absent class: undefined, not zero
    assert m.miou == pytest.approx(0.5) and m.pixel_acc == pytest.approx(2 / 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2 ** 31 - 1))
def test_perfect_prediction_and_counts(k, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (2, 5, 7), generator=g)
    target[0, 0] = 255
    cm = confusion_matrix(target.clamp_max(k - 1), target, k)
    assert cm.sum() == (target != 255).sum()
    m = metrics_from_confusion(confusion_matrix(torch.where(target == 255, 0, target), target, k))
    assert m.miou == pytest.approx(1.0) and m.pixel_acc == pytest.approx(1.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="argmax"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 5, 255]), 3)


def test_boundary_mask():
    from hrvit_edu.train import boundary_mask
    t = torch.full((1, 6, 6), 10)
    t[0, 2:4, 2:4] = 3
    t[0, 0, 5] = 255
    m = boundary_mask(t)
    assert m[0, 2:4, 2:4].all() and m[0, 1, 1] and not m[0, 5, 5] and not m[0, 0, 0]
    assert not m[0, 0, 5]                                   # ignored pixels are never boundary
    assert m.sum() == 18          # the 4x4 ring around the square + 2 neighbours of the ignored pixel
    with pytest.raises(ValueError, match="B, H, W"):
        boundary_mask(t[0])
