import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import hrvit_edu
from hrvit_edu.bench import count_params
from hrvit_edu.models.hrvit import (
    DES,
    OFFICIAL_BACKBONE_PARAMS,
    CrossResolutionFusion,
    HRViTAttn,
    HRViTBlock,
    des_factors,
    head_split,
    stripe_merge,
    stripe_partition,
)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("variant", ["b1", "b2", "b3"])
def test_published_backbones_match_official_parameter_counts(variant):
    m = hrvit_edu.create_model(f"hrvit_{variant}", num_classes=0, in_chans=3)
    official = OFFICIAL_BACKBONE_PARAMS[variant]
    assert abs(n_params(m) - official) / official < 0.01
    assert abs(n_params(m) - official) < 1e3          # in fact equal to the published 3 decimals


@pytest.mark.parametrize("variant, ade", [("b1", 8.183e6), ("b2", 20.810e6), ("b3", 28.724e6)])
def test_segformer_head_counts(variant, ade):
    m = hrvit_edu.create_model(f"hrvit_{variant}", num_classes=150, in_chans=3)
    assert abs(n_params(m) - ade) < 1e3


@pytest.mark.parametrize("c, p, k, params", [(32, 8, 4, 92), (48, 8, 6, 114), (64, 8, 8, 144),
                                            (96, 8, 12, 228), (128, 16, 8, 344), (240, 16, 15, 512),
                                            (256, 16, 16, 544), (384, 16, 24, 872), (512, 32, 16, 1328)])
def test_des_factor_choice_and_cost(c, p, k, params):
    assert des_factors(c) == (p, k)
    assert p == 2 ** math.ceil(math.floor(math.log2(c)) / 2)
    d = DES(c)
    assert n_params(d) == params == p * p + p + k * k + k
    assert params < c * c + c


def test_des_refuses_indivisible_widths():
    with pytest.raises(ValueError, match="not divisible"):
        des_factors(36)                      # e = 5, P = 8, 36 % 8 != 0
    with pytest.raises(ValueError, match="channels last"):
        DES(32)(torch.randn(2, 3, 16))


def test_des_is_a_kronecker_product_without_activation_and_bias():
    """(A kron B) vec_r(X) = vec_r(A X B^T): the identity the DES factorisation rests on."""
    torch.manual_seed(0)
    d = DES(48, act="identity").double()
    torch.nn.init.zeros_(d.right.bias)
    torch.nn.init.zeros_(d.left.bias)
    x = torch.randn(5, 7, 48, dtype=torch.float64)
    dense = torch.kron(d.left.weight, d.right.weight)           # (C, C)
    torch.testing.assert_close(d(x), x @ dense.T)


def test_des_with_bias_and_gelu_matches_naive_loops():
    torch.manual_seed(1)
    d = DES(32).double()
    x = torch.randn(3, 32, dtype=torch.float64)
    A, bA, B, bB = d.left.weight, d.left.bias, d.right.weight, d.right.bias
    out = torch.zeros_like(x)
    for n in range(3):
        X = x[n].reshape(d.k, d.p)
        Y = F.gelu(X @ B.T + bB)
        out[n] = (A @ Y + bA[:, None]).reshape(-1)
    torch.testing.assert_close(d(x), out)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), s=st.integers(1, 4), o=st.sampled_from("hv"))
def test_stripe_partition_roundtrip(h, w, s, o):
    x = torch.randn(2, h, w, 3)
    win, valid = stripe_partition(x, s, o)
    side = w if o == "h" else h
    assert win.shape == (2 * -(-(h if o == "h" else w) // s), s * side, 3)
    for g in range(win.shape[0]):                       # padding is a zero suffix
        assert (win[g, valid[g]:] == 0).all()
    assert valid.sum() == 2 * h * w
    torch.testing.assert_close(stripe_merge(win, 2, h, w, s, o), x)


def test_vertical_windows_are_column_major():
    x = torch.arange(12.).reshape(1, 3, 4, 1)           # value = 4 r + c
    win, _ = stripe_partition(x, 2, "v")
    assert win[0, :, 0].tolist() == [0, 4, 8, 1, 5, 9]  # column 0 top to bottom, then column 1


def test_head_split():
    assert head_split(32, 32) == (1, 16)                # b1's first branch: one half-width head
    assert head_split(240, 24) == (5, 24)
    assert head_split(256, 32) == (4, 32)


def _naive_attn(attn: HRViTAttn, x, h, w):
    """HRViTAttn written out stripe by stripe, head by head, on the real tokens only."""
    b, n, c = x.shape
    qv = attn.to_qv(x)
    q, v = qv[..., :c], qv[..., c:]
    qm, vm = q.reshape(b, h, w, c), v.reshape(b, h, w, c)
    y = torch.zeros(b, h, w, c, dtype=x.dtype)
    s, half, dh = attn.window, c // 2, attn.dim_head
    for bi in range(b):
        for o, sl in (("h", slice(0, half)), ("v", slice(half, c))):
            starts = range(0, h if o == "h" else w, s)
            for st0 in starts:
                if o == "h":
                    rows, cols = range(st0, min(st0 + s, h)), range(w)
                    toks = [(r, cc) for r in rows for cc in cols]
                else:
                    rows, cols = range(h), range(st0, min(st0 + s, w))
                    toks = [(r, cc) for cc in cols for r in rows]
                Q = torch.stack([qm[bi, r, cc, sl] for r, cc in toks])
                V = torch.stack([vm[bi, r, cc, sl] for r, cc in toks])
                for hd in range(attn.heads):
                    hs = slice(hd * dh, (hd + 1) * dh)
                    A = torch.softmax(attn.scale * Q[:, hs] @ V[:, hs].T, -1)
                    O = A @ V[:, hs]
                    for t, (r, cc) in enumerate(toks):
                        y[bi, r, cc, sl][hs] = O[t]
    p = attn.dw(F.hardswish(vm.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
    z = attn.proj(F.hardswish(y + p).reshape(b, n, c))
    return attn.bn(z.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("h, w, s", [(5, 6, 2), (7, 3, 3), (4, 4, 1), (3, 5, 7)])
def test_attention_matches_naive_restricted_to_real_tokens(h, w, s):
    torch.manual_seed(0)
    attn = HRViTAttn(32, window=s, dim_head=8, bn_init="identity", mask_value=float("-inf")).double().eval()
    x = torch.randn(2, h * w, 32, dtype=torch.float64)
    torch.testing.assert_close(attn(x, (h, w)), _naive_attn(attn, x, h, w))
    attn.mask_value = -100.0                              # the official code: e^-100 leakage only
    torch.testing.assert_close(attn(x, (h, w)), _naive_attn(attn, x, h, w), atol=1e-10, rtol=1e-8)


def test_zero_initialised_attention_block_identity():
    """Official init: BN gamma = beta = 0, so block(X) = X + DES(X) + MixCFN(LN2(X + DES(X)))."""
    torch.manual_seed(0)
    blk = HRViTBlock(64, window=2, dim_head=32, mlp_ratio=2).eval()
    x = torch.randn(2, 6 * 4, 64)
    mid = x + blk.des(x)
    torch.testing.assert_close(blk(x, (6, 4)), mid + blk.ffn(blk.norm2(mid), (6, 4)))
    paper = HRViTBlock(64, window=2, dim_head=32, mlp_ratio=2, attn_bn_init="identity").eval()
    paper.load_state_dict({k: v for k, v in blk.state_dict().items() if not k.startswith("attn.bn")}, strict=False)
    assert not torch.allclose(paper(x, (6, 4)), blk(x, (6, 4)))


def test_fusion_paths_and_widths():
    f = CrossResolutionFusion([16, 32], new_channels=64)
    assert f.out_channels == [16, 32, 64]
    xs = [torch.randn(1, 16, 16, 16), torch.randn(1, 32, 8, 8)]
    ys = f(xs)
    assert [tuple(y.shape) for y in ys] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4)]
    down4 = f.paths[2][0][0]
    assert (down4.kernel_size, down4.stride, down4.padding, down4.bias) == ((5, 5), (4, 4), (2, 2), None)


def test_backbone_outputs_and_bad_input():
    m = hrvit_edu.create_model("hrvit_textbook", num_classes=0)
    feats = m(torch.randn(2, 1, 64, 96))      # textbook: stem to stride 2, branches at 2, 4, 8, 16
    assert [tuple(f.shape) for f in feats] == [(2, 16, 32, 48), (2, 32, 16, 24), (2, 64, 8, 12), (2, 96, 4, 6)]
    with pytest.raises(ValueError, match="multiples of 16"):
        m(torch.randn(1, 1, 40, 64))
    with pytest.raises(ValueError, match="expected input"):
        m(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="expected input"):
        m(torch.randn(1, 64, 64))


def test_segmenter_pads_and_crops_odd_sizes():
    m = hrvit_edu.create_model("hrvit_textbook", num_classes=5).eval()
    x = torch.randn(1, 1, 50, 70)
    y = m(x)
    assert y.shape == (1, 5, 50, 70)
    assert m.stride == 16
    padded = F.pad(x, (0, (-70) % m.stride, 0, (-50) % m.stride))      # what the model pads to: 64 x 80
    torch.testing.assert_close(y, m(padded)[..., :50, :70])


def test_paper_flags_and_bad_flags():
    m = hrvit_edu.create_model("hrvit_textbook", des_act="hardswish", attn_bn_init="identity")
    assert isinstance(m.stages[0].branches[0][0].des.act, torch.nn.Hardswish)
    with pytest.raises(ValueError, match="bn_init"):
        hrvit_edu.create_model("hrvit_textbook", attn_bn_init="ones")
    with pytest.raises(ValueError, match="unknown activation"):
        hrvit_edu.create_model("hrvit_textbook", des_act="relu6")


def test_training_step_runs_and_drop_path_schedule():
    m = hrvit_edu.create_model("hrvit_textbook", drop_path=0.2)
    rates = [blk.drop_path.p for mod in m.stages for br in mod.branches for blk in br]
    assert max(rates) == pytest.approx(0.2) and min(rates) == 0.0
    loss = F.cross_entropy(m(torch.randn(2, 1, 64, 64)), torch.randint(0, 11, (2, 64, 64)))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_ablation_switches():
    base = hrvit_edu.create_model("hrvit_textbook", num_classes=0)
    dense = hrvit_edu.create_model("hrvit_textbook", num_classes=0, des="dense")
    sep = hrvit_edu.create_model("hrvit_textbook", num_classes=0, kv="separate")
    blocks = [blk for mod in base.stages for br in mod.branches for blk in br]
    c2 = sum(b.des.channels ** 2 + b.des.channels for b in blocks)
    kron = sum(n_params(b.des) for b in blocks)
    assert n_params(dense) - n_params(base) == c2 - kron          # DES saves exactly this
    assert n_params(sep) - n_params(base) == c2                    # K/V sharing saves a C x C + C
    for bad, msg in [({"des": "full"}, "des must be"), ({"kv": "tied"}, "kv must be"), ({"head_from": 4}, "head_from")]:
        with pytest.raises(ValueError, match=msg):
            hrvit_edu.create_model("hrvit_textbook", **bad)


def test_separate_keys_equal_shared_when_tied():
    torch.manual_seed(0)
    shared = HRViTAttn(32, window=2, dim_head=8, bn_init="identity").eval()
    sep = HRViTAttn(32, window=2, dim_head=8, bn_init="identity", kv="separate").eval()
    sep.load_state_dict(shared.state_dict(), strict=False)
    with torch.no_grad():
        sep.to_k.weight.copy_(shared.to_qv.weight[32:])
        sep.to_k.bias.copy_(shared.to_qv.bias[32:])
    x = torch.randn(2, 5 * 4, 32)
    torch.testing.assert_close(sep(x, (5, 4)), shared(x, (5, 4)))


def test_textbook_scale_adaptation_and_its_flag():
    m = hrvit_edu.create_model("hrvit_textbook", num_classes=0).eval()
    with torch.no_grad():
        feats = m(torch.zeros(1, 1, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4] and m.stride == 16
    published = hrvit_edu.create_model("hrvit_textbook", num_classes=0, stem_stride=4).eval()
    with torch.no_grad():
        assert [f.shape[-1] for f in published(torch.zeros(1, 1, 64, 64))] == [16, 8, 4, 2]
    assert count_params(published) == count_params(m)        # the adaptation changes a stride, not weights
    assert hrvit_edu.create_model("hrvit_b1", num_classes=0, in_chans=3).cfg.stem_stride == 4
    with pytest.raises(ValueError, match="stem_stride"):
        hrvit_edu.create_model("hrvit_textbook", stem_stride=8)
    seg = hrvit_edu.create_model("hrvit_textbook").eval()
    with torch.no_grad():
        assert seg(torch.zeros(2, 1, 40, 56)).shape == (2, 11, 40, 56)   # pads to multiples of 16
