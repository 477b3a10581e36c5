import pytest
import torch

import hrvit_edu
from hrvit_edu.profiles import PROFILES, get_profile


def test_registry_lists_baseline_first():
    names = hrvit_edu.list_models()
    assert names[0] == "preface_convnet"
    assert hrvit_edu.list_models(paper="preface") == ["preface_convnet", "preface_convnet_gn"]


def test_unknown_model_lists_known_ones():
    with pytest.raises(KeyError, match="preface_convnet"):
        hrvit_edu.create_model("resnet9000")


def test_segmentation_model_and_backbone():
    x = torch.randn(2, 1, 64, 48)
    seg = hrvit_edu.create_model("preface_convnet", num_classes=5)
    assert seg(x).shape == (2, 5, 64, 48)
    feats = hrvit_edu.create_model("preface_convnet", num_classes=0)(x)
    assert [f.shape[-1] for f in feats] == [24, 12, 6]
    assert sum(p.numel() for p in hrvit_edu.create_model("preface_convnet", num_classes=0).parameters()) < \
        sum(p.numel() for p in seg.parameters())


@pytest.mark.parametrize("shape, msg", [((1, 3, 64, 64), "expected input"), ((1, 64, 64), "expected input"),
                                        ((1, 1, 60, 64), "multiples of 8")])
def test_baseline_refuses_bad_input(shape, msg):
    with pytest.raises(ValueError, match=msg):
        hrvit_edu.create_model("preface_convnet")(torch.randn(shape))


def test_profiles(monkeypatch):
    assert set(PROFILES) == {"ci", "book", "full"}
    monkeypatch.delenv("HRVIT_EDU_PROFILE", raising=False)
    assert get_profile().name == "book"
    monkeypatch.setenv("HRVIT_EDU_PROFILE", "ci")
    assert get_profile().name == "ci"
    monkeypatch.setenv("HRVIT_EDU_PROFILE", "fast")
    with pytest.raises(ValueError, match="unknown profile 'fast'.*HRVIT_EDU_PROFILE.*ci, book, full"):
        get_profile()
    with pytest.raises(ValueError, match="from argument"):
        get_profile("quick")


def test_book_order_does_not_depend_on_import_order():
    import hrvit_edu.models.hrvit  # noqa: F401  (imported first on purpose)
    names = hrvit_edu.list_models()
    assert names.index("preface_convnet") < names.index("hrvit_b1")
    assert hrvit_edu.list_models(paper="hrvit") == ["hrvit_b1", "hrvit_b2", "hrvit_b3", "hrvit_textbook"]
