"""RTFormer (chapter 03): official parameter counts, shapes, the papers' invariants, clear errors."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import hrvit_edu
from hrvit_edu.models import rtformer as R


def _count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["slim", "base"])
def test_official_parameter_counts(name):
    """Inference form (no aux head), 19 classes, RGB: within 1% of the spec's count of the
    official configs (5.37 M Slim with injection in both blocks, 17.77 M Base)."""
    m = hrvit_edu.create_model(f"rtformer_{name}", num_classes=19, in_chans=3)
    assert m.aux_head is None
    assert abs(_count(m) / R.PUBLISHED_PARAMS[name] - 1) < 0.01


def test_shapes_strides_and_aux_output():
    m = hrvit_edu.create_model("rtformer_slim", num_classes=19, in_chans=3, base_channels=8, spp_channels=16,
                               head_channels=8).eval()
    x = torch.randn(2, 3, 128, 192)
    assert m(x).shape == (2, 19, 128, 192)
    x3_, xh, xl = m.forward_features(x)
    assert x3_.shape == xh.shape == (2, 16, 16, 24) and xl.shape == (2, 64, 4, 6)     # strides 8 and 32
    t = hrvit_edu.create_model("rtformer_textbook").train()
    out = t(torch.randn(2, 1, 64, 64))
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 11, 64, 64)] * 2
    assert t.aux_loss_weights == (0.4,)
    assert t.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 11, 64, 64)
    feats = hrvit_edu.create_model("rtformer_textbook", num_classes=0).eval()(torch.randn(1, 1, 64, 64))
    assert [f.shape for f in feats] == [(1, 32, 16, 16), (1, 128, 4, 4)]                # strides 4 and 16


@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (37, 45), (17, 70)])
def test_any_input_size(hw):
    """Odd sizes too: the stride-2 paths all round up alike, and every merge is a bilinear resize."""
    m = hrvit_edu.create_model("rtformer_textbook").eval()
    assert m(torch.randn(1, 1, *hw)).shape == (1, 11, *hw)


def test_gfa_is_two_one_by_one_convolutions_around_the_grouped_double_norm():
    """Eqs. (3.1)-(3.4) from the equations alone: conv1x1 (stride 2 when widening) -> softmax over
    positions -> L1 within groups -> conv1x1."""
    torch.manual_seed(0)
    attn = R.ExternalAttention(8, 16, 16, groups=4).eval()
    torch.nn.init.normal_(attn.k)
    x = torch.randn(2, 8, 6, 10)
    xn = attn.norm(x)
    a = torch.nn.functional.conv2d(xn, attn.k[:, :, None, None], stride=2)          # (2, 16, 3, 5)
    s = a.flatten(2).softmax(-1).view(2, 4, 4, 15)
    ah = (s / (s.sum(2, keepdim=True) + 1e-6)).view(2, 16, 3, 5)
    want = torch.nn.functional.conv2d(ah, attn.v[:, :, None, None])
    torch.testing.assert_close(attn(x), want)


def test_gfa_and_multi_head_ea_cost_the_same_multiply_adds():
    x = torch.randn(1, 64, 16, 16)
    macs = []
    for mod in (R.ExternalAttention(64, 64, 64, groups=8), R.MultiHeadExternalAttention(64, 64, 64, heads=8)):
        with FlopCounterMode(display=False) as fc:
            mod.eval()(x)
        macs.append(fc.get_total_flops() // 2)
    assert macs[0] == macs[1] == 2 * 256 * 64 * 64                   # N M (C + O), N = 256
    assert _count(R.ExternalAttention(64, 64, 64)) - 128 == 8 * (_count(R.MultiHeadExternalAttention(64, 64, 64)) - 128)


def test_external_attention_cost_is_linear_in_positions():
    mod = R.ExternalAttention(32, 32, 64).eval()
    flops = []
    for side in (8, 16, 32):
        with FlopCounterMode(display=False) as fc:
            mod(torch.randn(1, 32, side, side))
        flops.append(fc.get_total_flops())
    assert flops[1] == 4 * flops[0] and flops[2] == 16 * flops[0]


def test_cross_attention_scale_and_max_pooling():
    torch.manual_seed(0)
    ca = R.CrossResolutionAttention(8, 16, cross_size=3).eval()
    assert ca.scale == pytest.approx(1 / 3)
    assert R.CrossResolutionAttention(16, 16, 3, ca_scale="paper").scale == pytest.approx(0.25)
    x_h, x_l = torch.randn(2, 8, 12, 12), torch.randn(2, 16, 6, 6)
    k, v = ca.keys_values(x_l)
    pooled = torch.nn.functional.max_pool2d(ca.kv_norm(x_l), 2).flatten(2)       # 6 -> 3: 2x2 max
    kv = torch.einsum("oc,bcj->boj", ca.kv.weight[:, :, 0, 0], pooled)
    torch.testing.assert_close(torch.cat([k, v], 1), kv)
    q = ca.norm(x_h).flatten(2)
    want = torch.einsum("bcj,bjn->bcn", v, (torch.einsum("bcj,bcn->bjn", k, q) / 3).softmax(1))
    torch.testing.assert_close(ca(x_h, x_l), want.view(2, 8, 12, 12))


def test_paddle_bn_momentum_convention():
    """Paddle: running <- m running + (1 - m) batch.  Official m = 0.1 is PyTorch momentum 0.9."""
    assert R.paddle_to_torch_momentum(0.1) == pytest.approx(R.PADDLE_BN_MOMENTUM_0_1)
    bn = torch.nn.BatchNorm2d(1, momentum=R.paddle_to_torch_momentum(0.1))
    bn(torch.full((4, 1, 2, 2), 10.0))
    assert bn.running_mean.item() == pytest.approx(0.1 * 0 + 0.9 * 10)
    m = hrvit_edu.create_model("rtformer_textbook", bn_momentum=0.9)
    assert {b.momentum for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)} == {0.9}


def test_drop_path_and_injection_flags():
    m = hrvit_edu.create_model("rtformer_base", num_classes=19)
    assert m.layer4.down is not None and m.layer5.down is None
    s = hrvit_edu.create_model("rtformer_slim", num_classes=19)
    assert s.layer4.down is not None and s.layer5.down is not None
    assert s.layer4.drop_path.p == 0.2


def test_fit_trains_with_the_auxiliary_loss():
    from hrvit_edu.data import digitscenes_bundle
    from hrvit_edu.profiles import get_profile
    from hrvit_edu.train import fit, training_loss
    p = get_profile("ci")
    m = hrvit_edu.create_model("rtformer_textbook", base_channels=8, spp_channels=8, head_channels=8)
    h = fit(m, digitscenes_bundle(p.scenes), p.budget.replace(steps=3, warmup_steps=1, eval_every=0), progress=False)
    assert len(h.loss) == 3 and all(torch.isfinite(torch.tensor(h.loss)))
    y = torch.randint(0, 11, (1, 8, 8))
    main, aux = torch.zeros(1, 11, 8, 8), torch.randn(1, 11, 8, 8)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(training_loss(m, (main, aux), y), ce(main, y) + 0.4 * ce(aux, y))


def test_bad_input_raises_clear_errors():
    m = hrvit_edu.create_model("rtformer_textbook").eval()
    with pytest.raises(ValueError, match="B, 1, H, W"):
        m(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="B, 1, H, W"):
        m(torch.randn(1, 64, 64))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="normalization"):
        hrvit_edu.create_model("rtformer_textbook", normalization="l2")
    with pytest.raises(ValueError, match="attention"):
        hrvit_edu.create_model("rtformer_textbook", attention="mhsa")
    with pytest.raises(ValueError, match="groups"):
        R.ExternalAttention(8, 8, 12, groups=8)
    with pytest.raises(ValueError, match="stem_stride"):
        hrvit_edu.create_model("rtformer_textbook", stem_stride=8)
    with pytest.raises(ValueError, match="ExternalAttention"):
        R.ExternalAttention(8, 8, 16)(torch.randn(1, 4, 4, 4))


def test_control_arm_without_low_branch_attention():
    m = hrvit_edu.create_model("rtformer_textbook", attention="none").eval()
    assert m.layer4.attn_l is None and m.layer5.attn_l is None
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 11, 64, 64)
