import pytest
import torch

from hrvit_edu import kernels
from hrvit_edu.kernels import window_attention as W
from hrvit_edu.kernels.testing import check_against_reference, gradcheck_op
from hrvit_edu.models.hrvit import HRViTAttn

needs_triton = pytest.mark.skipif(not kernels.triton_usable(torch.zeros(1)),
                                  reason="Triton kernels are not runnable here (no Triton)")


def _inputs(shape, dtype, gen):
    g, n, d = shape
    q, k, v = (torch.randn(shape, generator=gen).to(dtype) for _ in range(3))
    valid = torch.randint(1, n + 1, (g,), generator=gen)
    valid[0] = n                                          # one window without padding
    return [q, k, v, valid]


@needs_triton
@pytest.mark.parametrize("mask_value", [-100.0, float("-inf")])
def test_matches_reference_on_awkward_windows(mask_value):
    # L = 1, 15, 17 (around the 16-tile), 40 (three tiles); d = 8, 24 (padded to 16, 32)
    rep = check_against_reference(
        lambda q, k, v, n: W.window_attention(q, k, v, n, 0.35, mask_value),
        lambda q, k, v, n: W.window_attention_reference(q, k, v, n, 0.35, mask_value),
        _inputs, shapes=[(2, 1, 8), (3, 15, 8), (2, 17, 24), (2, 40, 16)],
        dtypes=(torch.float32, torch.float16))
    assert rep.cases == 8


@needs_triton
def test_padded_keys_have_no_influence_with_neg_inf():
    q, k, v, _ = _inputs((1, 20, 16), torch.float32, torch.Generator().manual_seed(1))
    valid = torch.tensor([13])
    out = W.window_attention(q, k, v, valid, 0.25, float("-inf"))
    k2, v2 = k.clone(), v.clone()
    k2[:, 13:], v2[:, 13:] = 1e3, -1e3                   # garbage in the padded keys
    torch.testing.assert_close(W.window_attention(q, k2, v2, valid, 0.25, float("-inf")), out)
    exact = torch.softmax(0.25 * q @ k[:, :13].transpose(1, 2), -1) @ v[:, :13]   # real keys only
    torch.testing.assert_close(out, exact)


@needs_triton
def test_shared_key_value_gradients_add_up():
    q, kv, _, valid = _inputs((2, 9, 8), torch.float32, torch.Generator().manual_seed(2))
    q.requires_grad_(), kv.requires_grad_()
    W.window_attention(q, kv, kv, valid, 0.5).square().sum().backward()
    q2, kv2 = q.detach().double().requires_grad_(), kv.detach().double().requires_grad_()
    W.window_attention_reference(q2, kv2, kv2, valid, 0.5).square().sum().backward()
    torch.testing.assert_close(kv.grad, kv2.grad.float(), atol=1e-4, rtol=1e-4)


def test_gradcheck_float64():
    q, k, v, valid = _inputs((2, 9, 8), torch.float64, torch.Generator().manual_seed(3))
    assert gradcheck_op(lambda a, b, c: W.window_attention(a, b, c, valid, 0.5, -100.0), [q, k, v],
                        fast_mode=True)


def test_opcheck_and_compile():
    q, k, v, valid = _inputs((2, 7, 8), torch.float32, torch.Generator().manual_seed(4))
    torch.library.opcheck(W.window_attention_op, (q.requires_grad_(), k, v, valid, 0.5, -100.0))
    f = torch.compile(lambda a: W.window_attention(a, k, v, valid, 0.5) + 1, fullgraph=True,
                      backend="aot_eager")
    torch.testing.assert_close(f(q.detach()), W.window_attention_reference(q.detach(), k, v, valid, 0.5) + 1)


def test_hrvit_attention_uses_the_kernel_when_asked():
    torch.manual_seed(0)
    eager = HRViTAttn(32, window=2, dim_head=8, bn_init="identity", use_kernel=False).eval()
    fused = HRViTAttn(32, window=2, dim_head=8, bn_init="identity", use_kernel=True).eval()
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(2, 5 * 3, 32, requires_grad=True)
    torch.testing.assert_close(fused(x, (5, 3)), eager(x, (5, 3)), atol=1e-5, rtol=1e-4)
    g1, = torch.autograd.grad(fused(x, (5, 3)).sum(), x)
    g2, = torch.autograd.grad(eager(x, (5, 3)).sum(), x)
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)


def test_bad_input_is_refused():
    q = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="\\(G, L, d\\)"):
        W.window_attention(q, q[:, :4], q, torch.tensor([5, 5]), 1.0)
    with pytest.raises(ValueError, match="valid"):
        W.window_attention(q, q, q, torch.tensor([5.0, 5.0]), 1.0)
    with pytest.raises(ValueError, match="valid"):
        W.window_attention_reference(q, q, q, torch.tensor([5]), 1.0)


def test_reference_fallback_of_the_op_matches_autograd():
    """What runs without Triton (macOS/Windows) or with the reference backend forced."""
    q, k, v, valid = _inputs((3, 11, 8), torch.float64, torch.Generator().manual_seed(5))
    with kernels.use_backend("reference"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = W.window_attention(*leaves, valid, 0.4)
        grads = torch.autograd.grad(out.square().sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = W.window_attention_reference(*ref_leaves, valid, 0.4)
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, torch.autograd.grad(ref.square().sum(), ref_leaves)):
        torch.testing.assert_close(a, b)
