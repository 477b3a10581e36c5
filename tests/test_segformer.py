"""SegFormer (MiT), built to count the comparators chapter 01 measures HRViT against."""
import pytest
import torch

import hrvit_edu
from hrvit_edu.bench import count_params
from hrvit_edu.models.segformer import PUBLISHED_PARAMS


@pytest.mark.parametrize("variant", ["b1", "b2", "b3"])
def test_published_parameter_counts(variant):
    m = hrvit_edu.create_model(f"segformer_{variant}", num_classes=150, in_chans=3)
    want = PUBLISHED_PARAMS[variant]
    assert abs(count_params(m) - want) / want < 0.01


def test_shapes_and_bad_input():
    m = hrvit_edu.create_model("segformer_b1").eval()
    with torch.no_grad():
        assert m(torch.zeros(2, 1, 64, 64)).shape == (2, 11, 64, 64)
        feats = hrvit_edu.create_model("segformer_b1", num_classes=0).eval()(torch.zeros(1, 1, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 16), (128, 8, 8), (320, 4, 4), (512, 2, 2)]
    with pytest.raises(ValueError):
        m(torch.zeros(1, 3, 64, 64))          # wrong channel count
    with pytest.raises(ValueError):
        m(torch.zeros(64, 64))                # wrong rank
