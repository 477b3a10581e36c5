"""The fused Hire-MLP op (shift + rearrange + first linear, eq. 4.4) against its torch reference."""
import pytest
import torch

import hrvit_edu
from hrvit_edu import kernels
from hrvit_edu.kernels import hire as K
from hrvit_edu.kernels.testing import check_against_reference, gradcheck_op
from hrvit_edu.models.hire_mlp import region_partition

needs_triton = pytest.mark.skipif(not kernels.triton_usable(torch.zeros(1)),
                                  reason="Triton kernels are not runnable here (no Triton)")

# (H, W, p, s): divisible, padded (pad <= H), padded beyond H (a row copied twice), shifted, shift >= H
CASES = [(8, 5, 4, 0), (7, 6, 3, 2), (2, 3, 3, 1), (1, 4, 4, 0), (5, 5, 2, 7)]


def _inputs(c, o, p):
    def make(hw, dtype, gen):
        x = torch.randn(2, c, *hw, generator=gen)
        w1 = torch.randn(o, c * p, generator=gen) / (c * p) ** 0.5
        return [x.to(dtype), w1.to(dtype)]
    return make


def test_reference_is_partition_then_linear():
    x, w1 = torch.randn(2, 5, 7, 6), torch.randn(3, 15)
    for axis in ("h", "w"):
        want = torch.einsum("ok,bkgw->bogw", w1, region_partition(x, 3, 2, axis))
        torch.testing.assert_close(K.region_linear_reference(x, w1, 3, 2, axis), want)


@pytest.mark.parametrize("h, w, p, s", CASES)
def test_backward_equations_match_autograd(h, w, p, s):
    for axis in ("h", "w"):
        x, w1 = _inputs(5, 3, p)((h, w), torch.float64, torch.Generator().manual_seed(h * 10 + w))
        z = K.region_linear_reference(x, w1, p, s, axis)
        dz = torch.randn_like(z)
        leaves = [x.clone().requires_grad_(), w1.clone().requires_grad_()]
        want = torch.autograd.grad(K.region_linear_reference(*leaves, p, s, axis), leaves, dz)
        for got, ref in zip(K.region_linear_backward_reference(x, dz, w1, p, s, axis), want):
            torch.testing.assert_close(got, ref)


@needs_triton
@pytest.mark.parametrize("h, w, p, s", CASES)
@pytest.mark.parametrize("axis", ["h", "w"])
def test_fused_op_matches_reference(h, w, p, s, axis):
    """Forward and both gradients, fp32 and fp16, odd C and O; the width branch reads a transposed
    view in place."""
    rep = check_against_reference(lambda x, w1: K.region_linear(x, w1, p, s, axis),
                                  lambda x, w1: K.region_linear_reference(x, w1, p, s, axis),
                                  _inputs(5, 3, p), shapes=[(h, w)], dtypes=(torch.float32, torch.float16))
    assert rep.cases == 2


@needs_triton
def test_kernel_path_is_taken_and_tiles_span_several_blocks(monkeypatch):
    calls = []
    real = K.region_linear_triton
    monkeypatch.setattr(K, "region_linear_triton", lambda *a: calls.append(1) or real(*a))
    x, w1 = _inputs(24, 40, 2)((9, 8), torch.float32, torch.Generator().manual_seed(0))   # K = 48, O = 40 > 32
    out = K.region_linear(x, w1, 2, 1, "h")
    assert calls
    torch.testing.assert_close(out, K.region_linear_reference(x, w1, 2, 1, "h"))


@needs_triton
def test_masks_keep_memory_outside_the_views_out():
    """The interpreter does not fault on out-of-bounds loads: embed x, W_1 and dZ in NaN-filled
    buffers (views with foreign strides) and check no NaN reaches any result."""
    gen = torch.Generator().manual_seed(3)
    c, o, p, h, w = 5, 3, 3, 7, 4
    xbuf = torch.full((2, c + 1, h + 3, w + 5), float("nan"))
    x = xbuf[:, :c, 1:h + 1, 2:w + 2]
    x.copy_(torch.randn(2, c, h, w, generator=gen))
    wbuf = torch.full((o + 4, c * p), float("nan"))
    w1 = wbuf[:o]
    w1.copy_(torch.randn(o, c * p, generator=gen))
    for axis in ("h", "w"):
        z = K.region_linear_triton(x, w1, p, 2, axis)
        torch.testing.assert_close(z, K.region_linear_reference(x, w1, p, 2, axis))
        dzbuf = torch.full((2, o + 2, z.shape[2] + 1, z.shape[3] + 2), float("nan"))
        dz = dzbuf[:, :o, :z.shape[2], 1:z.shape[3] + 1]
        dz.copy_(torch.randn(z.shape, generator=gen))
        got = K.region_linear_backward_triton(x, dz, w1, p, 2, axis)
        want = K.region_linear_backward_reference(x, dz, w1, p, 2, axis)
        for g, r in zip(got, want):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_gradcheck_float64_through_the_op():
    x, w1 = _inputs(3, 2, 3)((4, 3), torch.float64, torch.Generator().manual_seed(1))
    assert gradcheck_op(lambda a, b: K.region_linear(a, b, 3, 1, "h"), [x, w1], fast_mode=True)
    assert gradcheck_op(lambda a, b: K.region_linear(a, b, 3, 1, "w"), [x, w1], fast_mode=True)


def test_opcheck_and_compile():
    x, w1 = _inputs(4, 2, 2)((5, 4), torch.float32, torch.Generator().manual_seed(2))
    torch.library.opcheck(K.region_linear, (x.requires_grad_(), w1.requires_grad_(), 2, 1, "w"))
    f = torch.compile(lambda t: K.region_linear(t, w1, 2, 1, "h") * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x.detach()), 2 * K.region_linear_reference(x.detach(), w1.detach(), 2, 1, "h"))


@needs_triton
def test_model_with_the_fused_op_computes_the_same_function():
    torch.manual_seed(0)
    m = hrvit_edu.create_model("hire_mlp_tiny", dims=(8, 16, 16, 16), depths=(1, 2, 1, 1)).eval()
    x = torch.randn(1, 1, 32, 28)
    eager = m.use_kernels(False)(x)
    fused = m.use_kernels(True)(x.clone())
    torch.testing.assert_close(fused, eager, atol=1e-4, rtol=1e-4)


def test_bad_input_raises_clear_errors():
    x, w1 = torch.randn(1, 4, 6, 6), torch.randn(2, 8)
    with pytest.raises(ValueError, match="B, C, H, W"):
        K.region_linear(x[0], w1, 2)
    with pytest.raises(ValueError, match="C\\*p"):
        K.region_linear(x, torch.randn(2, 12), 2)
    with pytest.raises(TypeError, match="floating-point"):
        K.region_linear(x.long(), w1, 2)
    with pytest.raises(TypeError, match="one dtype"):
        K.region_linear(x.double(), w1, 2)
    with pytest.raises(ValueError, match="axis"):
        K.region_linear(x, w1, 2, 0, "d")
    with pytest.raises(ValueError, match="p >= 1"):
        K.region_linear(x, torch.randn(2, 0), 0)
