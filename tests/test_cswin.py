"""CSWin, built to count the second comparator chapter 01 measures HRViT against."""
import pytest
import torch

import hrvit_edu
from hrvit_edu.bench import count_flops, count_params
from hrvit_edu.models.cswin import OFFICIAL_CODE_PARAMS, PUBLISHED_GMACS_224, PUBLISHED_PARAMS, LePEAttention


@pytest.mark.parametrize("variant", ["t", "s", "b"])
def test_published_classifier_counts(variant):
    m = hrvit_edu.create_model(f"cswin_{variant}", num_classes=1000, in_chans=3, task="classify").eval().to("meta")
    assert count_params(m) == OFFICIAL_CODE_PARAMS[variant]
    assert abs(count_params(m) - PUBLISHED_PARAMS[variant]) / PUBLISHED_PARAMS[variant] < 0.04   # README rounds
    with torch.no_grad():
        gmacs = count_flops(lambda: m(torch.zeros(1, 3, 224, 224, device="meta"))) / 2e9
    assert abs(gmacs - PUBLISHED_GMACS_224[variant]) / PUBLISHED_GMACS_224[variant] < 0.02


def test_shapes_any_size_and_classifier():
    seg = hrvit_edu.create_model("cswin_t", num_classes=0, embed_dim=16, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        # 100 x 84: stage maps 25x21, 13x11, 7x6, 4x3; stripes of 2 and 7 do not divide them (padding path)
        feats = seg(torch.randn(1, 1, 100, 84))
        assert [tuple(f.shape[1:]) for f in feats] == [(16, 25, 21), (32, 13, 11), (64, 7, 6), (128, 4, 3)]
        assert all(torch.isfinite(f).all() for f in feats)
        logits = hrvit_edu.create_model("cswin_t", embed_dim=16, depths=(1, 1, 1, 1)).eval()(torch.randn(2, 1, 64, 48))
        assert logits.shape == (2, 11, 64, 48)
        cls = hrvit_edu.create_model("cswin_t", num_classes=7, task="classify", embed_dim=16, depths=(1, 1, 1, 1))
        assert cls.eval()(torch.randn(3, 1, 64, 64)).shape == (3, 7)


@pytest.mark.parametrize("orientation", ["v", "h"])
def test_stripe_locality(orientation):
    """A token's output depends only on the tokens of its own stripe (attention and LePE alike)."""
    torch.manual_seed(0)
    attn = LePEAttention(8, 2, orientation, split=2)
    x = torch.randn(1, 6, 6, 8, requires_grad=True)
    attn(x, x, x)[0, 2, 3].sum().backward()
    touched = x.grad[0].abs().sum(-1) > 0
    expect = torch.zeros(6, 6, dtype=torch.bool)
    if orientation == "v":
        expect[:, 2:4] = True                 # columns 2-3: the 6 x 2 stripe holding column 3
    else:
        expect[2:4, :] = True                 # rows 2-3
    assert torch.equal(touched, expect)


def test_bad_input():
    m = hrvit_edu.create_model("cswin_t", embed_dim=16, depths=(1, 1, 1, 1)).eval()
    with pytest.raises(ValueError):
        m(torch.zeros(1, 3, 64, 64))          # wrong channel count
    with pytest.raises(ValueError):
        m(torch.zeros(64, 64))                # wrong rank
    with pytest.raises(TypeError):
        m(torch.zeros(1, 1, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError):
        hrvit_edu.create_model("cswin_t", task="detect")
    with pytest.raises(ValueError):
        hrvit_edu.create_model("cswin_t", heads=(3, 4, 8, 16))   # odd head count cannot split in two
