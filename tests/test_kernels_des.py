import pytest
import torch

from hrvit_edu import kernels
from hrvit_edu.kernels import des as D
from hrvit_edu.kernels.testing import check_against_reference, gradcheck_op
from hrvit_edu.models.hrvit import DES

needs_triton = pytest.mark.skipif(not kernels.triton_usable(torch.zeros(1)),
                                  reason="Triton kernels are not runnable here (no Triton)")


def _inputs(k, p):
    def make(n, dtype, gen):
        x = torch.randn(n, k * p, generator=gen)
        aw = torch.randn(k, k, generator=gen) / k ** 0.5
        bw = torch.randn(p, p, generator=gen) / p ** 0.5
        return [x.to(dtype), aw.to(dtype), torch.randn(k, generator=gen).to(dtype), bw.to(dtype),
                torch.randn(p, generator=gen).to(dtype)]
    return make


@needs_triton
@pytest.mark.parametrize("k, p", [(4, 8), (6, 8), (15, 16), (24, 16), (16, 32)])   # official (K, P) incl. odd K
@pytest.mark.parametrize("act", ["gelu", "identity"])
def test_fused_des_matches_reference(k, p, act):
    rep = check_against_reference(lambda *a: D.des(*a, act), lambda *a: D.des_reference(*a, act),
                                  lambda n, dt, g: _inputs(k, p)(n, dt, g),
                                  shapes=[1, 17, 37], dtypes=(torch.float32, torch.float16))
    assert rep.cases == 6


@needs_triton
def test_kernel_path_is_taken_and_partial_blocks_are_masked(monkeypatch):
    calls = []
    real = D.des_forward_triton
    monkeypatch.setattr(D, "des_forward_triton", lambda *a: calls.append(1) or real(*a))
    x, aw, ab, bw, bb = _inputs(6, 8)(19, torch.float32, torch.Generator().manual_seed(0))
    out = D.des(x, aw, ab, bw, bb)
    assert calls
    torch.testing.assert_close(out, D.des_reference(x, aw, ab, bw, bb))


@needs_triton
def test_masks_keep_memory_past_the_last_token_out():
    """The interpreter does not fault on out-of-bounds loads, so poison the memory right after
    the tokens (a view into a larger buffer) and check nothing of it reaches any result."""
    x, aw, ab, bw, bb = _inputs(6, 8)(20, torch.float32, torch.Generator().manual_seed(5))
    buf, dbuf = x.clone(), torch.randn_like(x)
    buf[3:], dbuf[3:] = float("nan"), float("nan")
    xs, dus = buf[:3], dbuf[:3]                       # 3 tokens: most of one block is padding
    torch.testing.assert_close(D.des_forward_triton(xs, aw, ab, bw, bb), D.des_reference(xs, aw, ab, bw, bb))
    got = D.des_backward_triton(xs, dus, aw, bw, bb)
    want = D.des_backward_reference(xs, dus, aw, bw, bb)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_gradcheck_float64_through_the_op():
    x, aw, ab, bw, bb = _inputs(6, 8)(5, torch.float64, torch.Generator().manual_seed(1))
    assert gradcheck_op(lambda *a: D.des(*a, "gelu"), [x, aw, ab, bw, bb], fast_mode=True)


def test_backward_equations_match_autograd():
    x, aw, ab, bw, bb = _inputs(15, 16)(9, torch.float64, torch.Generator().manual_seed(2))
    du = torch.randn_like(x)
    leaves = [t.clone().requires_grad_() for t in (x, aw, ab, bw, bb)]
    want = torch.autograd.grad(D.des_reference(*leaves), leaves, du)
    for got, w in zip(D.des_backward_reference(x, du, aw, bw, bb), want):
        torch.testing.assert_close(got, w)


def test_opcheck_and_compile():
    x, aw, ab, bw, bb = _inputs(4, 8)(6, torch.float32, torch.Generator().manual_seed(3))
    torch.library.opcheck(D.des, (x.requires_grad_(), aw.requires_grad_(), ab, bw, bb, "gelu"))
    f = torch.compile(lambda t: D.des(t, aw, ab, bw, bb, "gelu") * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x.detach()), 2 * D.des_reference(x.detach(), aw, ab, bw, bb))


def test_module_uses_the_kernel_when_asked():
    torch.manual_seed(0)
    eager, fused = DES(96, use_kernel=False), DES(96, use_kernel=True)
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(2, 5, 96, requires_grad=True)
    torch.testing.assert_close(fused(x), eager(x), atol=1e-5, rtol=1e-4)
    g1, = torch.autograd.grad(fused(x).square().sum(), x)
    g2, = torch.autograd.grad(eager(x).square().sum(), x)
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)


def test_bad_input_is_refused():
    x, aw, ab, bw, bb = _inputs(4, 8)(3, torch.float32, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="K\\*P"):
        D.des(x[:, :30], aw, ab, bw, bb)
    with pytest.raises(ValueError, match="\\(N, C\\)"):
        D.des(x[None], aw, ab, bw, bb)
    with pytest.raises(ValueError, match="activation"):
        D.des(x, aw, ab, bw, bb, "relu")
    with pytest.raises(ValueError, match="factors"):
        D.des(x, aw, ab[:2], bw, bb)


def test_reference_fallback_of_the_op_matches_autograd():
    x, aw, ab, bw, bb = _inputs(15, 16)(7, torch.float64, torch.Generator().manual_seed(6))
    with kernels.use_backend("reference"):
        leaves = [t.clone().requires_grad_() for t in (x, aw, ab, bw, bb)]
        grads = torch.autograd.grad(D.des(*leaves).square().sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (x, aw, ab, bw, bb)]
    for a, b in zip(grads, torch.autograd.grad(D.des_reference(*ref_leaves).square().sum(), ref_leaves)):
        torch.testing.assert_close(a, b)
