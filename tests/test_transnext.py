"""TransNeXt (chapter 02): published counts, the paper's invariants (LSCA scale, N per query,
log-CPB coordinates, ConvGLU width), any input size, clear errors."""
import math

import pytest
import torch

import hrvit_edu
from hrvit_edu.bench import count_flops, count_params
from hrvit_edu.models.transnext import (
    PUBLISHED_PARAMS,
    TAU_INIT,
    AggregatedAttention,
    ConvGLU,
    LogCPB,
    _cpb_table,
    convglu_hidden,
    log_spaced,
    no_weight_decay,
    pool_axis,
)

SMALL = dict(dims=(16, 16, 32, 32), heads=(2, 2, 4, 4), depths=(1, 1, 1, 1), head_dim=16)


@pytest.mark.parametrize("variant", ["micro", "tiny", "small", "base"])
def test_published_parameter_counts(variant):
    m = hrvit_edu.create_model(f"transnext_{variant}", num_classes=1000, in_chans=3, task="classify").to("meta")
    want = PUBLISHED_PARAMS[variant]
    assert abs(count_params(m) - want) / want < 0.01


def test_exact_counts_of_the_official_code():
    # counted by instantiating the official classification code (DaiShiResearch/TransNeXt)
    m = hrvit_edu.create_model("transnext_micro", num_classes=1000, in_chans=3, task="classify").to("meta")
    assert count_params(m) == 12_809_304
    m = hrvit_edu.create_model("transnext_tiny", num_classes=1000, in_chans=3, task="classify").to("meta")
    assert count_params(m) == 28_258_960


def test_lsca_scale_at_init_is_one_over_0_24():
    attn = AggregatedAttention(72, 3, sr=8)
    torch.testing.assert_close(attn.tau(), torch.full((3,), TAU_INIT))
    assert math.isclose(TAU_INIT * math.log(9 + 49), 16.92, abs_tol=5e-3)      # Tiny stage 1, 224^2, interior


def test_cpb_coordinates_of_stage_1_at_224():
    assert pool_axis(56, 7).tolist() == [3.5 + 8 * m for m in range(7)]
    table, index = _cpb_table((56, 56), (7, 7), (56, 56))
    assert index.numel() == 56 * 56 * 49
    assert math.isclose(table.abs().max().item(), math.log2(1 + 51.5 / 55 * 8) / 3, rel_tol=1e-6)
    assert math.isclose(table.abs().max().item(), 1.029, abs_tol=1e-3)
    assert log_spaced(torch.tensor([-7.0, 0.0, 1.0])).tolist() == pytest.approx([-1.0, 0.0, 1 / 3])


def test_interpolate_mode_is_extrapolate_mode_at_the_training_grid():
    cpb = LogCPB(3)
    ext = cpb((8, 8), (2, 2), (14, 14), "extrapolate")
    itp = cpb((8, 8), (2, 2), (14, 14), "interpolate", (8, 8), (2, 2))
    torch.testing.assert_close(itp, ext)
    assert cpb((12, 10), (3, 2), (14, 14), "interpolate", (8, 8), (2, 2)).shape == (3, 120, 6)


def test_convglu_width_and_gate():
    assert [convglu_hidden(c, r) for c, r in [(48, 8), (96, 8), (192, 4), (384, 4)]] == [256, 512, 512, 1024]
    assert [convglu_hidden(c, r) for c, r in [(72, 8), (144, 8), (288, 4), (576, 4)]] == [384, 768, 768, 1536]
    glu = ConvGLU(12, 4)
    x = torch.randn(2, 5 * 6, 12)
    with torch.no_grad():
        glu.fc1.bias[glu.hidden:] = 0
        glu.fc1.weight[glu.hidden:] = 0                       # u = 0: the product, hence the output, is b_2
    torch.testing.assert_close(glu(x, (5, 6)), glu.fc2.bias.expand(2, 30, 12))


def test_convglu_costs_what_an_mlp_of_the_same_ratio_does():
    c, r, hw = 64, 4, (8, 8)
    glu = ConvGLU(c, r)
    h = glu.hidden
    assert count_params(glu) == (c * 2 * h + 2 * h) + (9 * h + h) + (h * c + c)      # fc1, dwconv, fc2
    linear, mlp = 3 * c * h, 2 * c * r * c                     # the weights of ConvGLU's linears vs MLP(r)
    assert abs(linear - mlp) / mlp < 0.01
    flops = count_flops(lambda: glu(torch.zeros(1, 64, c), hw))
    hid = glu.hidden
    assert flops == 2 * 64 * (c * 2 * hid + hid * c) + 2 * 64 * hid * 9    # fc1 + fc2 + dwconv MACs, x 2


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (37, 29), (16, 16)])
def test_segmenter_takes_any_input_size(size):
    m = hrvit_edu.create_model("transnext_micro", **SMALL, img_size=64).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 1, *size)).shape == (1, 11, *size)
        feats = hrvit_edu.create_model("transnext_micro", num_classes=0, **SMALL, img_size=64).eval()(
            torch.randn(1, 1, *size))
    assert [f.shape[1] for f in feats] == [16, 16, 32, 32]


def test_classifier_takes_a_size_other_than_its_construction_size():
    m = hrvit_edu.create_model("transnext_micro", num_classes=10, in_chans=3, task="classify", **SMALL,
                               img_size=64).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 96, 64)).shape == (2, 10)


def test_no_weight_decay_follows_the_official_list():
    m = hrvit_edu.create_model("transnext_micro", **SMALL)
    names = no_weight_decay(m)
    assert "stages.0.0.attn.temperature" in names and "stages.0.0.attn.cpb.fc1.weight" in names
    assert "stages.0.0.attn.query_embedding" in names and "stages.0.0.attn.relative_pos_bias_local" in names
    assert "stages.0.0.attn.learnable_tokens" not in names and "stages.0.0.attn.q.weight" not in names


def test_official_init():
    m = hrvit_edu.create_model("transnext_tiny", num_classes=0, img_size=64)
    w = m.stages[2][0].attn.q.weight
    assert abs(w.std().item() - 0.02) < 2e-3          # trunc_normal_(std=0.02) truncates at +-2, i.e. never
    conv = m.embeds[1].proj
    want = math.sqrt(2 / (9 * conv.out_channels))
    assert abs(conv.weight.std().item() - want) / want < 0.05
    assert m.stages[0][0].attn.relative_pos_bias_local.abs().max() <= 8e-4


def test_bad_input_raises_clear_errors():
    m = hrvit_edu.create_model("transnext_micro", **SMALL)
    with pytest.raises(ValueError, match="B, 1, H, W"):
        m(torch.randn(1, 3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="task"):
        hrvit_edu.create_model("transnext_micro", task="detect")
    with pytest.raises(ValueError, match="cpb_mode"):
        hrvit_edu.create_model("transnext_micro", cpb_mode="nearest")
    with pytest.raises(ValueError, match="one entry per stage"):
        hrvit_edu.create_model("transnext_micro", depths=(1, 1, 1))
    with pytest.raises(ValueError, match="odd"):
        AggregatedAttention(16, 2, sr=2, window=4)
    with pytest.raises(ValueError, match="divisible"):
        AggregatedAttention(15, 2, sr=2)
    attn = AggregatedAttention(16, 2, sr=2)
    with pytest.raises(ValueError, match="expects"):
        attn(torch.randn(1, 20, 16), (4, 4))


def test_comparators_and_ablation_arms_build_and_run():
    from hrvit_edu.models import transnext as T
    for arm, kw in T.ABLATIONS.items():
        m = hrvit_edu.create_model("transnext_micro", **SMALL, img_size=32, **kw).eval()
        with torch.no_grad():
            assert m(torch.randn(1, 1, 48, 40)).shape == (1, 11, 48, 40), arm
    soft = hrvit_edu.create_model("transnext_micro", **SMALL, img_size=32, attention="softmax")
    assert not any("temperature" in n or "cpb" in n for n, _ in soft.named_parameters())
    assert any(n.endswith("table.table") for n, _ in soft.named_parameters())
    ffn = hrvit_edu.create_model("transnext_micro", **SMALL, mlp="convffn")
    assert isinstance(ffn.stages[0][0].mlp, T.ConvFFN)
    nopos = hrvit_edu.create_model("transnext_micro", **SMALL, positional=False)
    assert not any("learnable_tokens" in n for n, _ in nopos.named_parameters())
    with pytest.raises(ValueError, match="attention must be one of"):
        hrvit_edu.create_model("transnext_micro", **SMALL, attention="linear")
    with pytest.raises(ValueError, match="mlp must be"):
        hrvit_edu.create_model("transnext_micro", **SMALL, mlp="swiglu")


def test_table_bias_is_exact_at_the_training_grid_and_resized_elsewhere():
    from hrvit_edu.models.transnext import TableBias, resize_bias
    tb = TableBias(2, (8, 8), (2, 2))
    assert tb((8, 8), (2, 2)) is tb.table
    out = tb((12, 10), (3, 2))
    assert out.shape == (2, 120, 6)
    # a constant table stays constant under bilinear resizing
    const = torch.full((2, 64, 4), 0.7)
    torch.testing.assert_close(resize_bias(const, (8, 8), (2, 2), (5, 9), (3, 3)), torch.full((2, 45, 9), 0.7))


def test_window_helpers_are_the_shifted_sums():
    from hrvit_edu.kernels import aggregated_attention as A
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 12, 4, generator=g), torch.randn(1, 2, 12, 4, generator=g)
    dots = A.window_dots(q, k, (3, 4), 3)
    valid = A.window_validity(3, 4, 3)
    for i in range(12):
        r, c = divmod(i, 4)
        for z in range(9):
            rr, cc = r + z // 3 - 1, c + z % 3 - 1
            want = (q[0, :, i] * k[0, :, rr * 4 + cc]).sum(-1) if valid[i, z] else torch.zeros(2)
            torch.testing.assert_close(dots[0, :, i, z], want)
    w = torch.randn(1, 2, 12, 9, generator=g)
    torch.testing.assert_close(A.window_sum(w, k, (3, 4), 3),
                               torch.einsum("bhnz,bhnzd->bhnd", w.masked_fill(~valid, 0), torch.stack(
                                   [torch.stack([k[:, :, (i // 4 + z // 3 - 1) * 4 + i % 4 + z % 3 - 1] if valid[i, z]
                                                 else torch.zeros(1, 2, 4) for z in range(9)], -2)
                                    for i in range(12)], 2)))
