"""The fused GPU-friendly attention op (eqs. 3.1-3.5, two passes each way) against its torch reference."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hrvit_edu
from hrvit_edu import kernels
from hrvit_edu.kernels import external_attention as E
from hrvit_edu.kernels.testing import check_against_reference, gradcheck_op

needs_triton = pytest.mark.skipif(not kernels.triton_usable(torch.zeros(1)),
                                  reason="Triton kernels are not runnable here (no Triton)")

# (C, N, M, O, G): one tile; N across tiles and pass-1 splits (N > 8 x 32); a group of 12 units
# (not a power of two: masked columns); G = 1 (EANet's DN); a single position; C and O > 32.
CASES = [(5, 7, 16, 6, 1), (20, 300, 48, 24, 4), (8, 33, 36, 5, 3), (4, 1, 16, 3, 2), (40, 45, 32, 36, 2)]


def _inputs(c, m, o):
    def make(n, dtype, gen):
        x = torch.randn(2, c, n, generator=gen)
        k = torch.randn(m, c, generator=gen) / c ** 0.5 * 2      # logits of a few units: softmax not flat
        v = torch.randn(o, m, generator=gen)
        return [x.to(dtype), k.to(dtype), v.to(dtype)]
    return make


def test_reference_normalisations():
    """Eq. (3.2): every unit's weights over the positions sum to 1; eq. (3.3): every position's
    weights sum to 1 within each group (up to eps)."""
    a = torch.randn(2, 12, 9, dtype=torch.float64) * 3
    ah = E.grouped_double_norm(a, 3, eps=0.0)
    torch.testing.assert_close(ah.view(2, 3, 4, 9).sum(2), torch.ones(2, 3, 9, dtype=torch.float64))
    s = a.softmax(-1)
    torch.testing.assert_close(s.sum(-1), torch.ones(2, 12, dtype=torch.float64))
    sg = s.view(2, 3, 4, 9)
    torch.testing.assert_close(ah, (sg / sg.sum(2, keepdim=True)).view(2, 12, 9))


def test_double_norm_is_invariant_to_a_per_unit_shift_of_the_logits():
    """Adding b_m to unit m's logits (every position) changes nothing: the softmax over N removes it.
    A single softmax over M (per position) would not be invariant to that shift."""
    a = torch.randn(1, 8, 10, dtype=torch.float64)
    shift = torch.randn(1, 8, 1, dtype=torch.float64) * 5
    torch.testing.assert_close(E.grouped_double_norm(a + shift, 2), E.grouped_double_norm(a, 2))
    assert not torch.allclose((a + shift).softmax(1), a.softmax(1))


@pytest.mark.parametrize("c, n, m, o, g", CASES)
def test_backward_equations_match_autograd(c, n, m, o, g):
    x, k, v = _inputs(c, m, o)(n, torch.float64, torch.Generator().manual_seed(n))
    dy = torch.randn(2, o, n, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, k, v)]
    want = torch.autograd.grad(E.external_attention_reference(*leaves, g), leaves, dy)
    for got, ref in zip(E.external_attention_backward_reference(x, k, v, dy, g), want):
        torch.testing.assert_close(got, ref)


@needs_triton
@pytest.mark.parametrize("c, n, m, o, g", CASES)
def test_fused_op_matches_reference(c, n, m, o, g):
    """Forward and every gradient, fp32 and fp16."""
    rep = check_against_reference(lambda x, k, v: E.external_attention(x, k, v, g),
                                  lambda x, k, v: E.external_attention_reference(x, k, v, g),
                                  _inputs(c, m, o), shapes=[n], dtypes=(torch.float32, torch.float16))
    assert rep.cases == 2


@needs_triton
def test_kernel_path_is_taken_and_column_statistics_are_exact(monkeypatch):
    calls = []
    real = E.external_attention_triton
    monkeypatch.setattr(E, "external_attention_triton", lambda *a: calls.append(1) or real(*a))
    x, k, v = _inputs(6, 32, 8)(600, torch.float64, torch.Generator().manual_seed(0))   # 3 splits
    out = E.external_attention(x, k, v, 2)
    assert calls
    torch.testing.assert_close(out, E.external_attention_reference(x, k, v, 2))
    lse = E.column_logsumexp_triton(x, k, 2)
    torch.testing.assert_close(lse, torch.logsumexp(torch.einsum("mc,bcn->bmn", k, x), -1))


@needs_triton
def test_masks_keep_memory_outside_the_views_out():
    """The interpreter does not fault on out-of-bounds loads: x is a view into a NaN-filled buffer
    (foreign strides) and K, V, dY sit before NaN rows; no NaN may reach any result."""
    gen = torch.Generator().manual_seed(3)
    c, n, m, o, g = 5, 37, 36, 6, 3                                   # group of 12 -> tile of 16
    xbuf = torch.full((2, c + 3, n + 9), float("nan"))
    x = xbuf[:, 1:c + 1, 4:n + 4]
    x.copy_(torch.randn(2, c, n, generator=gen))
    kbuf = torch.full((m + 8, c), float("nan"))
    k = kbuf[:m]
    k.copy_(torch.randn(m, c, generator=gen))
    vbuf = torch.full((o, m + 8), float("nan"))
    v = vbuf[:, :m].contiguous()
    v.copy_(torch.randn(o, m, generator=gen))
    y, lse = E.external_attention_triton(x, k, v, g)
    assert torch.isfinite(y).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(y, E.external_attention_reference(x, k, v, g))
    dy = torch.randn(y.shape, generator=gen)
    got = E.external_attention_backward_triton(x, k, v, lse, dy, g)
    want = E.external_attention_backward_reference(x, k, v, dy, g)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_gradcheck_float64_through_the_op():
    x, k, v = _inputs(3, 16, 2)(5, torch.float64, torch.Generator().manual_seed(1))
    assert gradcheck_op(lambda a, b, c: E.external_attention(a, b, c, 2), [x, k, v], fast_mode=True)


def test_opcheck_and_compile():
    x, k, v = _inputs(4, 16, 3)(6, torch.float32, torch.Generator().manual_seed(2))
    torch.library.opcheck(E._external_attention_fwd, (x.requires_grad_(), k.requires_grad_(),
                                                      v.requires_grad_(), 4, 1e-6))
    f = torch.compile(lambda t: E.external_attention(t, k, v, 4) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x.detach()), 2 * E.external_attention_reference(x.detach(), k.detach(),
                                                                                v.detach(), 4))


@needs_triton
def test_model_with_the_fused_op_computes_the_same_function():
    torch.manual_seed(0)
    m = hrvit_edu.create_model("rtformer_textbook", base_channels=8, groups=4).eval()
    x = torch.randn(1, 1, 32, 48)
    eager = m.use_kernels(False)(x)
    fused = m.use_kernels(True)(x.clone())
    torch.testing.assert_close(fused, eager, atol=1e-4, rtol=1e-4)


def test_bad_input_raises_clear_errors():
    x, k, v = torch.randn(1, 4, 6), torch.randn(8, 4), torch.randn(3, 8)
    with pytest.raises(ValueError, match="B, C, N"):
        E.external_attention(x[0], k, v)
    with pytest.raises(ValueError, match="channels"):
        E.external_attention(x, torch.randn(8, 5), v)
    with pytest.raises(ValueError, match="memory units"):
        E.external_attention(x, k, torch.randn(3, 6))
    with pytest.raises(ValueError, match="dividing M"):
        E.external_attention(x, k, v, 3)
    with pytest.raises(TypeError, match="floating-point"):
        E.external_attention(x.long(), k, v)
    with pytest.raises(TypeError, match="one dtype"):
        E.external_attention(x.double(), k, v)
    with pytest.raises(ValueError, match="N >= 1"):
        E.external_attention(x[..., :0], k, v)


@needs_triton
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.integers(1, 40), n=st.integers(1, 70), mg=st.integers(1, 20), g=st.integers(1, 3),
       o=st.integers(1, 40), scale=st.floats(0.1, 4.0))
def test_random_shapes_agree_with_the_reference(c, n, mg, g, o, scale):
    gen = torch.Generator().manual_seed(c * 1000 + n)
    x = torch.randn(2, c, n, generator=gen, dtype=torch.float64)
    k = torch.randn(mg * g, c, generator=gen, dtype=torch.float64) * scale
    v = torch.randn(o, mg * g, generator=gen, dtype=torch.float64)
    y, lse = E.external_attention_triton(x, k, v, g)
    torch.testing.assert_close(y, E.external_attention_reference(x, k, v, g))
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    for a, b in zip(E.external_attention_backward_triton(x, k, v, lse, dy, g),
                    E.external_attention_backward_reference(x, k, v, dy, g)):
        torch.testing.assert_close(a, b)


@needs_triton
def test_groups_wider_than_one_register_tile_use_the_reference(monkeypatch):
    """M/G = 200 would be a 256-wide register tile: the op runs the reference instead."""
    calls = []
    monkeypatch.setattr(E, "external_attention_triton", lambda *a: calls.append(1))
    x, k, v = _inputs(4, 200, 3)(5, torch.float32, torch.Generator().manual_seed(0))
    torch.testing.assert_close(E.external_attention(x, k, v, 1), E.external_attention_reference(x, k, v, 1))
    assert not calls
