"""TransNeXt's two fused ops against their references: aggregated attention (eqs. 2.4-2.8) and the
window-attention kernel extended with a learnable per-query scale and an additive bias (2.9-2.10)."""
import pytest
import torch
import torch.nn.functional as F

import hrvit_edu
from hrvit_edu import kernels
from hrvit_edu.kernels import aggregated_attention as A
from hrvit_edu.kernels import window_attention as W
from hrvit_edu.kernels.testing import check_against_reference, gradcheck_op

needs_triton = pytest.mark.skipif(not kernels.triton_usable(torch.zeros(1)),
                                  reason="Triton kernels are not runnable here (no Triton)")


def agg_inputs(b, nh, h, w, p, d, window=3):
    def make(_shape, dtype, gen):
        n, kk = h * w, window * window
        r = lambda *s: torch.randn(*s, generator=gen)
        unit = lambda t: F.normalize(t, dim=-1)
        ts = [unit(r(b, nh, n, d)), unit(r(b, nh, n, d)), r(b, nh, n, d), unit(r(b, nh, p, d)), r(b, nh, p, d),
              0.1 * r(nh, d), 2 + torch.rand(nh, generator=gen), 0.1 * r(nh, kk), 0.1 * r(nh, n, p),
              0.1 * r(nh, d, kk), 0.1 * r(nh, kk)]
        return [t.to(dtype) for t in ts]
    return make


# (B, heads, H, W, P, d, window): non-square maps, 1-pixel-wide maps, P = 1, P > 16 (two pooled
# tiles' worth), d = 24 (the published head width, padded to 32), window 5
AGG_CASES = [(2, 2, 5, 7, 4, 8, 3), (1, 3, 6, 6, 9, 24, 3), (1, 2, 1, 9, 1, 16, 3), (2, 1, 3, 17, 20, 8, 3),
             (1, 2, 4, 5, 2, 16, 5)]


@pytest.mark.parametrize("case", AGG_CASES)
def test_shifted_views_equal_the_official_unfold_form(case):
    b, nh, h, w, p, d, win = case
    ins = agg_inputs(b, nh, h, w, p, d, win)(None, torch.float64, torch.Generator().manual_seed(0))
    torch.testing.assert_close(A.aggregated_attention_reference(*ins, (h, w), win),
                               A.aggregated_attention_unfold(*ins, (h, w), win))


@pytest.mark.parametrize("case", AGG_CASES[:3])
def test_backward_equations_match_autograd(case):
    b, nh, h, w, p, d, win = case
    gen = torch.Generator().manual_seed(1)
    ins = [t.requires_grad_() for t in agg_inputs(b, nh, h, w, p, d, win)(None, torch.float64, gen)]
    out = A.aggregated_attention_unfold(*ins, (h, w), win)
    do = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    want = torch.autograd.grad(out, ins, do)
    got = A.aggregated_attention_backward_reference(do, *[t.detach() for t in ins], (h, w), win)
    for name, g, r in zip(("q k v kp vp qe tau b_loc b_pool tokens beta").split(), got, want):
        torch.testing.assert_close(g, r, msg=lambda m: f"d{name}: {m}")


def test_key_counts_are_9_6_4_plus_pooled():
    n = A.key_counts(4, 5, 3, 7).reshape(4, 5)
    assert n[0, 0] == n[0, -1] == n[-1, 0] == n[-1, -1] == 4 + 7
    assert n[0, 2] == n[2, 0] == 6 + 7 and n[1, 1] == 9 + 7
    assert A.key_counts(1, 1, 3, 1).item() == 2


@needs_triton
def test_fused_kernel_matches_reference():
    for case in AGG_CASES:
        b, nh, h, w, p, d, win = case
        rep = check_against_reference(
            lambda *t: A.aggregated_attention(*t, (h, w), win),
            lambda *t: A.aggregated_attention_reference(*t, (h, w), win),
            agg_inputs(b, nh, h, w, p, d, win), shapes=[case], dtypes=(torch.float32, torch.float16))
        assert rep.cases == 2


@needs_triton
def test_kernel_path_is_taken(monkeypatch):
    calls = []
    real = A.aggregated_attention_forward_triton
    monkeypatch.setattr(A, "aggregated_attention_forward_triton", lambda *a: calls.append(1) or real(*a))
    ins = agg_inputs(1, 2, 6, 7, 3, 8)(None, torch.float32, torch.Generator().manual_seed(2))
    out = A.aggregated_attention(*ins, (6, 7))
    assert calls
    torch.testing.assert_close(out, A.aggregated_attention_reference(*ins, (6, 7)))


@needs_triton
def test_window_keys_are_local_and_off_map_slots_are_masked():
    """Garbage in K/V outside a query's window must not reach it (the interpreter does not fault on
    stray loads, so test the masks by their effect); border queries see fewer keys, not shifted ones."""
    h, w = 6, 7
    ins = agg_inputs(1, 1, h, w, 2, 8)(None, torch.float32, torch.Generator().manual_seed(3))
    base = A.aggregated_attention(*ins, (h, w))
    k2, v2 = ins[1].clone(), ins[2].clone()
    far = 5 * w + 6                                           # pixel (5, 6): outside every window of rows <= 3
    k2[..., far, :], v2[..., far, :] = 1e4, float("nan")
    ins2 = list(ins)
    ins2[1], ins2[2] = k2, v2
    out = A.aggregated_attention(*ins2, (h, w))
    torch.testing.assert_close(out[..., :4 * w, :], base[..., :4 * w, :])
    assert torch.isnan(out[..., far, :]).all()                # ... while its own window does read it


def test_gradcheck_float64_through_the_op():
    ins = agg_inputs(1, 2, 3, 4, 2, 4)(None, torch.float64, torch.Generator().manual_seed(4))
    assert gradcheck_op(lambda *t: A.aggregated_attention(*t, (3, 4)), ins, fast_mode=True)


def test_opcheck_and_compile():
    ins = agg_inputs(1, 2, 3, 4, 2, 8)(None, torch.float32, torch.Generator().manual_seed(5))
    torch.library.opcheck(A.aggregated_attention_op, (*[t.requires_grad_() for t in ins], 3, 4, 3))
    f = torch.compile(lambda q: A.aggregated_attention(q, *ins[1:], (3, 4)) * 2, fullgraph=True, backend="aot_eager")
    want = 2 * A.aggregated_attention_reference(ins[0].detach(), *[t.detach() for t in ins[1:]], (3, 4))
    torch.testing.assert_close(f(ins[0].detach()), want)


def test_bad_input_raises_clear_errors():
    ins = agg_inputs(1, 2, 3, 4, 2, 8)(None, torch.float32, torch.Generator().manual_seed(6))
    with pytest.raises(ValueError, match="H\\*W"):
        A.aggregated_attention(*ins, (4, 4))
    with pytest.raises(ValueError, match="odd"):
        A.aggregated_attention(*ins, (3, 4), 2)
    with pytest.raises(ValueError, match="b_pool must have shape"):
        A.aggregated_attention(*ins[:8], ins[8][:, :, :1], *ins[9:], (3, 4))
    with pytest.raises(TypeError, match="one dtype"):
        A.aggregated_attention(ins[0].double(), *ins[1:], (3, 4))
    with pytest.raises(ValueError, match="B, h, H\\*W, d"):
        A.aggregated_attention(ins[0][0], *ins[1:], (3, 4))


# ------------------------------------------------------------------------------ eq. (2.9)
def scaled_inputs(nb):
    def make(shape, dtype, gen):
        g, n, d = shape
        q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
        valid = torch.randint(1, n + 1, (g,), generator=gen)
        valid[0] = n
        scale = 0.3 + torch.rand(g, n, generator=gen)
        bias = torch.randn(nb, n, n, generator=gen)
        return [q.to(dtype), k.to(dtype), v.to(dtype), valid, scale.to(dtype), bias.to(dtype)]
    return make


@needs_triton
@pytest.mark.parametrize("nb", [1, 2])
def test_scaled_window_attention_matches_reference(nb):
    # L = 1, 17 (around the 16-tile), 33 (three tiles); every gradient, d lam and dB included
    rep = check_against_reference(
        lambda q, k, v, n, s, b: W.scaled_window_attention(q, k, v, n, s, b),
        lambda q, k, v, n, s, b: W.window_attention_reference(q, k, v, n, s, float("-inf"), b),
        scaled_inputs(nb), shapes=[(2, 1, 8), (4, 17, 24), (2, 33, 16)], dtypes=(torch.float32,))
    assert rep.cases == 3


@needs_triton
def test_scaled_window_attention_fp16_gradients_within_the_rounding_of_o():
    """fp16: the backward's D_i = dO_i . O_i reads the fp16-rounded O (as in FlashAttention), an
    error of ~2^-11 |O|; d lam_i = sum_j dS_ij C_ij multiplies it by the raw dot products C, so d lam
    is held to a tolerance that scales with max |C| (here ~15), the others to fp16's usual one."""
    q, k, v, valid, scale, bias = scaled_inputs(2)((4, 17, 24), torch.float16, torch.Generator().manual_seed(9))
    leaves = [t.clone().requires_grad_() for t in (q, k, v, scale, bias)]
    out = W.scaled_window_attention(leaves[0], leaves[1], leaves[2], valid, leaves[3], leaves[4])
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(10)).half()
    got = torch.autograd.grad(out, leaves, do)
    ref = [t.detach().double().requires_grad_() for t in (q, k, v, scale, bias)]
    want = torch.autograd.grad(W.window_attention_reference(ref[0], ref[1], ref[2], valid, ref[3], float("-inf"),
                                                            ref[4]), ref, do.double())
    c = (q.double() @ k.double().transpose(1, 2)).abs().amax((1, 2))                # |C| per window-head
    for name, g, r in zip(("dq", "dk", "dv", "dlam", "dbias"), got, want):
        tol = 0.05 if name != "dlam" else 2 ** -11 * 4 * float(c.max()) * float(r.abs().max() + 1)
        assert (g.double() - r).abs().max() <= tol, name


def test_scaled_window_attention_gradcheck_and_opcheck():
    q, k, v, valid, scale, bias = scaled_inputs(2)((4, 6, 4), torch.float64, torch.Generator().manual_seed(7))
    assert gradcheck_op(lambda a, b, c, s, bb: W.scaled_window_attention(a, b, c, valid, s, bb),
                        [q, k, v, scale, bias], fast_mode=True)
    torch.library.opcheck(W.scaled_window_attention_op,
                          tuple(t.float().requires_grad_() if t.is_floating_point() else t
                                for t in (q, k, v, valid, scale, bias)))
    torch.library.opcheck(W.scaled_window_attention_op, (q.float(), k.float(), v.float(), valid, scale.float(), None))


def test_scaled_window_attention_refuses_bad_scale_and_bias():
    q, k, v, valid, scale, bias = scaled_inputs(2)((4, 6, 4), torch.float32, torch.Generator().manual_seed(8))
    with pytest.raises(ValueError, match="scale must be"):
        W.scaled_window_attention(q, k, v, valid, scale[:, :3], bias)
    with pytest.raises(ValueError, match="n_B dividing"):
        W.scaled_window_attention(q, k, v, valid, scale, torch.randn(3, 6, 6))


@needs_triton
def test_models_with_the_fused_ops_compute_the_same_function():
    torch.manual_seed(0)
    m = hrvit_edu.create_model("transnext_micro", dims=(16, 16, 32, 32), heads=(2, 2, 4, 4), depths=(1, 1, 1, 1),
                               img_size=64, head_dim=16).eval()
    x = torch.randn(1, 1, 48, 40)
    eager = m.use_kernels(False)(x)
    fused = m.use_kernels(True)(x.clone())
    torch.testing.assert_close(fused, eager, atol=1e-4, rtol=1e-4)
