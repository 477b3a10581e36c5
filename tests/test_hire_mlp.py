"""Hire-MLP (chapter 04): published counts, the rearrangements' invariants, any input size."""
import pytest
import torch
import torch.nn.functional as F

import hrvit_edu
from hrvit_edu.bench import count_flops, count_params
from hrvit_edu.models.hire_mlp import (
    PUBLISHED_GMACS_224,
    PUBLISHED_PARAMS,
    HireModule,
    TokenMixingMLP,
    region_partition,
    region_restore,
    shift_schedule,
)

SMALL = dict(dims=(8, 16, 24, 32), depths=(1, 2, 3, 1))


@pytest.mark.parametrize("variant", ["tiny", "small", "base", "large"])
def test_published_counts(variant):
    m = hrvit_edu.create_model(f"hire_mlp_{variant}", num_classes=1000, in_chans=3, task="classify").to("meta")
    want = PUBLISHED_PARAMS[variant]
    assert abs(count_params(m) - want) / want < 0.01
    with torch.no_grad():
        gmacs = count_flops(lambda: m(torch.zeros(1, 3, 224, 224, device="meta"))) / 2e9
    assert abs(gmacs - PUBLISHED_GMACS_224[variant]) / PUBLISHED_GMACS_224[variant] < 0.02


def test_shift_schedules_of_the_official_configs():
    cfg = hrvit_edu.create_model("hire_mlp_base", num_classes=0, task="classify").cfg
    got = [shift_schedule(6, a, b) for a, b in zip(cfg.step_stride, cfg.step_dilation)]
    assert got == [[0, 2, 0, 2, 0, 2], [0, 2, 0, 2, 0, 2], [0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 0, 1]]


@pytest.mark.parametrize("h, p, s", [(8, 4, 0), (7, 3, 0), (7, 3, 2), (5, 4, 1), (2, 3, 1), (1, 4, 0)])
def test_partition_is_roll_then_circular_pad(h, p, s):
    """Eq. (4.2): rows r of the padded, rolled map are X[(r - s) mod H] -- the official
    roll + circular F.pad where that is defined (padding <= H), and beyond it."""
    x = torch.randn(2, 3, h, 5)
    z = region_partition(x, p, s, "h")
    hp = -(-h // p) * p
    assert z.shape == (2, 3 * p, hp // p, 5)
    rows = z.reshape(2, 3, p, hp // p, 5).transpose(2, 3).reshape(2, 3, hp, 5)
    assert torch.equal(rows, x[:, :, [(r - s) % h for r in range(hp)]])
    if hp - h <= h:
        official = F.pad(torch.roll(x, s, 2), (0, 0, 0, hp - h), mode="circular")
        assert torch.equal(rows, official)
    # channel c*p + i holds offset i of the region
    assert torch.equal(z[:, 1 * p + (p - 1), 0], rows[:, 1, p - 1])


@pytest.mark.parametrize("axis", ["h", "w"])
@pytest.mark.parametrize("size, p, s", [(9, 3, 1), (7, 4, 2), (2, 3, 0)])
def test_restore_inverts_partition(axis, size, p, s):
    x = torch.randn(1, 4, size, size + 1) if axis == "h" else torch.randn(1, 4, size + 1, size)
    z = region_partition(x, p, s, axis)
    assert torch.equal(region_restore(z, p, size, s, axis), x)


def test_rearrange_plus_linear_is_a_strided_convolution():
    """The two views of one operator: W_1 on the stacked regions == conv with a (p x 1) kernel,
    stride (p, 1), on the padded map (and (1 x p), stride (1, p) for the width branch)."""
    torch.manual_seed(0)
    c, p, o = 6, 3, 4
    x, w1 = torch.randn(2, c, 9, 7), torch.randn(o, c * p)
    lin = torch.einsum("ok,bkgw->bogw", w1, region_partition(x, p, 0, "h"))
    conv = F.conv2d(x, w1.reshape(o, c, p, 1), stride=(p, 1))
    torch.testing.assert_close(lin, conv)
    xw = F.pad(x, (0, 2, 0, 0), mode="circular")                        # W = 7 -> 9
    lin_w = torch.einsum("ok,bkhg->bohg", w1, region_partition(x, p, 0, "w"))
    torch.testing.assert_close(lin_w, F.conv2d(xw, w1.reshape(o, c, 1, p), stride=(1, p)))


def test_shift_moves_region_borders():
    """Without the shift a token never mixes with a token across a region border; with it, it does."""
    torch.manual_seed(0)
    for s, crosses in ((0, False), (1, True)):
        m = HireModule(8, 2, s).eval()
        x = torch.randn(1, 8, 4, 4, requires_grad=True)
        m.branch_h(x)[0, :, 1, 0].sum().backward()                      # row 1: region {0, 1} unshifted
        touched = x.grad[0].abs().sum(dim=(0, 2)) > 0
        assert bool(touched[2]) == crosses and bool(touched[1])


@pytest.mark.parametrize("fusion", ["reweight", "sum"])
def test_any_input_size_and_both_fusions(fusion):
    m = hrvit_edu.create_model("hire_mlp_tiny", fusion=fusion, **SMALL).eval()
    with torch.no_grad():
        for hw in [(64, 64), (40, 56), (33, 47), (100, 20)]:
            y = m(torch.randn(1, 1, *hw))
            assert y.shape == (1, 11, *hw) and torch.isfinite(y).all()
        feats = hrvit_edu.create_model("hire_mlp_tiny", num_classes=0, **SMALL).eval()(torch.randn(2, 1, 64, 48))
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 16, 12), (16, 8, 6), (24, 4, 3), (32, 2, 2)]


def test_cost_is_linear_in_pixels():
    m = hrvit_edu.create_model("hire_mlp_tiny", num_classes=0, in_chans=3, task="classify").to("meta")
    f = [count_flops(lambda s=s: m(torch.zeros(1, 3, s, s, device="meta"))) for s in (192, 384)]
    assert abs(f[1] / f[0] - 4) < 0.02


def test_bad_input():
    m = hrvit_edu.create_model("hire_mlp_tiny", **SMALL).eval()
    with pytest.raises(ValueError):
        m(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError):
        m(torch.zeros(64, 64))
    with pytest.raises(TypeError):
        m(torch.zeros(1, 1, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError):
        hrvit_edu.create_model("hire_mlp_tiny", fusion="max")
    with pytest.raises(ValueError):
        hrvit_edu.create_model("hire_mlp_tiny", depths=(1, 1, 1))
    with pytest.raises(ValueError):
        region_partition(torch.zeros(3, 4, 4), 2)
    with pytest.raises(ValueError):
        region_partition(torch.zeros(1, 3, 4, 4), 2, axis="x")


def test_official_init_is_trunc_normal_002_and_torch_init_is_an_option():
    torch.manual_seed(0)
    m = hrvit_edu.create_model("hire_mlp_tiny", num_classes=1000, in_chans=3, task="classify")
    convs = [mod for mod in m.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    w = torch.cat([mod.weight.flatten() for mod in convs])
    assert abs(w.std().item() - 0.02) < 0.001 and w.abs().max().item() <= 2.0
    assert all(mod.bias is None or not mod.bias.any() for mod in convs)
    norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert all(bool((n.weight == 1).all()) and not n.bias.any() for n in norms)
    stem = hrvit_edu.create_model("hire_mlp_tiny", init="torch").stem[0].weight     # Kaiming-uniform(a=sqrt 5)
    bound = 1 / stem[0].numel() ** 0.5                                            # 1 / sqrt(fan_in)
    assert stem.abs().max().item() <= bound and stem.std().item() > 0.5 * bound / 3 ** 0.5
    seg = hrvit_edu.create_model("hire_mlp_textbook", init="official")   # the backbone only:
    backbone = torch.cat([m.weight.flatten() for m in seg.stages.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(backbone.std().item() - 0.02) < 0.002
    assert seg.head.classifier.bias.any()                                  # the book's head keeps its init
    with pytest.raises(ValueError, match="init"):
        hrvit_edu.create_model("hire_mlp_tiny", init="xavier")


def test_token_mixing_mlp_is_tied_to_its_size():
    mix = TokenMixingMLP((8, 8), 16)
    assert mix(torch.randn(2, 3, 8, 8)).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="built for 8x8"):
        mix(torch.randn(2, 3, 16, 16))
    assert hrvit_edu.create_model("hire_mlp_textbook").cfg.stem_stride == 2


def test_chapter_arms_are_single_changes_at_the_full_budget():
    from hrvit_edu.models import hire_mlp as HM
    from hrvit_edu.profiles import get_profile

    assert HM.ABLATIONS["reference"] == {}
    assert all(len(kw) == 1 for name, kw in HM.ABLATIONS.items() if name != "reference")
    main = get_profile("book").budget
    b = HM.ablation_budget(main)
    assert b.steps == main.steps and b.eval_every == 0
    (arms, seeds), (lr_arms, lr_seeds) = HM.ablation_sweep()
    assert [a.name for a in arms] == list(HM.ABLATIONS) and seeds == [0, 1, 2]
    assert [a.budget for a in lr_arms] == [{"lr": lr} for lr in HM.ABLATION_LRS] and lr_seeds == [0]
    for kw in HM.ABLATIONS.values():
        m = hrvit_edu.create_model("hire_mlp_textbook", **kw).eval()
        with torch.no_grad():
            assert m(torch.zeros(1, 1, 64, 64)).shape == (1, 11, 64, 64)
