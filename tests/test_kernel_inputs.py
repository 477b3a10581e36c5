"""Kernels refuse bad input the same way on both backends, and agree on random odd shapes.

One validation function per op is shared by the Triton path and the reference path, so a bad
input gives the same clear error whichever backend runs.  Property tests (hypothesis) draw odd
shapes, masks and dtypes and compare the Triton kernels (the interpreter on CPU) with the
references, forward and backward.
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hrvit_edu import kernels
from hrvit_edu.kernels import des as D
from hrvit_edu.kernels import softmax as K
from hrvit_edu.kernels import window_attention as W

BACKENDS = ["triton", "reference"] if kernels.HAS_TRITON else ["reference"]
SLOW_OK = settings(max_examples=8, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_inputs_are_refused(backend):
    xi = torch.arange(12).reshape(3, 4)
    with kernels.use_backend(backend):
        with pytest.raises(TypeError, match="softmax_rows: x must be a floating-point tensor, got torch.int64"):
            K.softmax_rows(xi)
        with pytest.raises(TypeError, match="floating-point"):
            K.softmax(xi)
        a, b = torch.eye(2), torch.eye(2)
        with pytest.raises(TypeError, match="des: x must be a floating-point tensor"):
            D.des(torch.ones(3, 4, dtype=torch.int32), a, torch.zeros(2), b, torch.zeros(2))
        q = torch.ones(2, 5, 4, dtype=torch.int64)
        with pytest.raises(TypeError, match="window_attention: q must be a floating-point tensor"):
            W.window_attention(q, q, q, torch.tensor([5, 5]), 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_backward_needs_matching_shapes(backend):
    y, dy = torch.softmax(torch.randn(5, 37), -1), torch.randn(2, 37)
    with kernels.use_backend(backend), pytest.raises(ValueError, match=r"shapes must match.*\(5, 37\).*\(2, 37\)"):
        K.softmax_rows_backward(y, dy)


def test_softmax_bf16_on_cpu_is_right_under_the_triton_backend():
    x = torch.randn(6, 50).bfloat16()
    with kernels.use_backend("triton" if kernels.HAS_TRITON else "reference"):
        y = K.softmax(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().sum(-1), torch.ones(6), atol=1e-2, rtol=0)
    torch.testing.assert_close(y.float(), torch.softmax(x.float(), -1), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_attention_checks_are_shared_by_both_backends(backend):
    q = torch.randn(2, 5, 4)
    with kernels.use_backend(backend):
        with pytest.raises(ValueError, match=r"q, k, v must all be \(G, L, d\)"):
            W.window_attention(q, torch.randn(2, 6, 4), q, torch.tensor([5, 5]), 0.5)
        with pytest.raises(ValueError, match=r"q, k, v must all be \(G, L, d\)"):
            W.window_attention(q[None], q[None], q[None], torch.tensor([5, 5]), 0.5)
        with pytest.raises(ValueError, match=r"valid must be an int tensor of shape \(2,\)"):
            W.window_attention(q, q, q, torch.tensor([5, 5, 5]), 0.5)
        with pytest.raises(TypeError, match="one dtype"):
            W.window_attention(q, q.double(), q, torch.tensor([5, 5]), 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_des_checks_are_shared_by_both_backends(backend):
    x = torch.randn(3, 8)
    a, b = torch.randn(2, 2), torch.randn(4, 4)
    with kernels.use_backend(backend):
        with pytest.raises(TypeError, match="des: inputs must share one dtype"):
            D.des(x, a.double(), torch.zeros(2), b, torch.zeros(4))
        with pytest.raises(ValueError, match=r"x has 8 channels but the factors give K\*P = 2\*2"):
            D.des(x, a, torch.zeros(2), torch.eye(2), torch.zeros(2))
        with pytest.raises(ValueError, match="DES kernel takes tokens"):
            D.des(x[None], a, torch.zeros(2), b, torch.zeros(4))


def test_models_refuse_integer_images_and_bad_arguments():
    from hrvit_edu import create_model
    model = create_model("preface_convnet").eval()
    with pytest.raises(TypeError, match="PrefaceConvNet: expected a floating-point image batch, got torch.uint8"):
        model(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    hr = create_model("hrvit_textbook").eval()
    with pytest.raises(TypeError, match="HRViT: expected a floating-point image batch"):
        hr(torch.zeros(1, 1, 32, 32, dtype=torch.int64))
    for name in ("preface_convnet", "hrvit_textbook"):
        with pytest.raises(ValueError, match="in_chans must be an integer >= 1, got 0"):
            create_model(name, in_chans=0)
        with pytest.raises(ValueError, match="num_classes must be (an integer )?>= 0"):
            create_model(name, num_classes=-1)


def test_hrvit_constructor_says_what_it_builds():
    from hrvit_edu.models.hrvit import VARIANTS, HRViT
    with pytest.raises(TypeError, match="num_classes"):
        HRViT(VARIANTS["textbook"])                        # no silent 3-channel backbone default


# ------------------------------------------------------------------------------ one switch
def test_the_backend_switch_reaches_the_models(monkeypatch):
    from hrvit_edu.models import hrvit as H
    calls = []
    real = H.des_fused
    monkeypatch.setattr(H, "des_fused", lambda *a: calls.append(1) or real(*a))
    des = H.DES(16).eval()
    x = torch.randn(2, 5, 16)
    with kernels.use_backend("reference"):
        des(x)
    assert calls == []                                      # reference: the eager path
    if kernels.HAS_TRITON:
        with kernels.use_backend("triton"):
            des(x)
        assert calls == [1]                                 # triton: the fused op, even on CPU
    des(x)
    assert calls == [1] * bool(kernels.HAS_TRITON) or kernels.HAS_CUDA    # auto on CPU: eager


def test_importing_the_package_leaves_the_environment_alone():
    code = ("import os, sys\n"
            "before = dict(os.environ)\n"
            "import hrvit_edu, hrvit_edu.kernels, hrvit_edu.kernels.des, hrvit_edu.kernels.softmax\n"
            "import hrvit_edu.kernels.window_attention, hrvit_edu.models.hrvit, hrvit_edu.train\n"
            "import hrvit_edu.grading, hrvit_edu.bench, hrvit_edu.data, hrvit_edu.notebook\n"
            "hrvit_edu.list_models()\n"
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
            "assert hrvit_edu.kernels.get_backend() == 'auto'\n"
            "print('ok', hrvit_edu.kernels.describe())\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["HRVIT_EDU_KERNELS"] = ""                            # empty: auto, not an import error
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    if kernels.HAS_TRITON and not kernels.HAS_CUDA:
        assert "torch reference on CPU" in r.stdout


def test_the_interpreter_must_come_before_the_kernels():
    code = ("import hrvit_edu.kernels.des, hrvit_edu.kernels as k\n"
            "try:\n    k.enable_interpreter()\nexcept RuntimeError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    if kernels.HAS_TRITON and not kernels.HAS_CUDA:
        assert "were imported before the Triton interpreter was switched on" in r.stdout
        assert "call setup_notebook()" in r.stdout


def test_a_bad_backend_variable_is_reported_on_first_use():
    code = "import hrvit_edu.kernels as k\ntry:\n    k.get_backend()\nexcept ValueError as e:\n    print(e)\n"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HRVIT_EDU_KERNELS": "turbo"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "HRVIT_EDU_KERNELS='turbo' is not one of" in r.stdout, r.stderr


# ------------------------------------------------------------------------------ properties
def _both(fn):
    """fn() under each backend."""
    out = {}
    for b in BACKENDS:
        with kernels.use_backend(b):
            out[b] = fn()
    return out


@SLOW_OK
@given(rows=st.integers(1, 5), cols=st.integers(1, 70), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2 ** 16))
def test_softmax_agrees_across_backends(rows, cols, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(rows, cols, generator=g)).to(dtype)
    up = torch.randn(rows, cols, generator=g).to(dtype)

    def run():
        xx = x.clone().requires_grad_()
        y = K.softmax(xx)
        (gx,) = torch.autograd.grad(y, xx, up)
        return y.detach(), gx
    out = _both(run)
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)
    for b in BACKENDS:
        torch.testing.assert_close(out[b][0], torch.softmax(x, -1), **tol)
        torch.testing.assert_close(out[b][1], out["reference"][1], **tol)


@SLOW_OK
@given(kp=st.sampled_from([(1, 2), (2, 2), (3, 4), (2, 8), (6, 4), (5, 8)]), n=st.integers(1, 40),
       act=st.sampled_from(["gelu", "identity"]), seed=st.integers(0, 2 ** 16))
def test_des_agrees_across_backends(kp, n, act, seed):
    k, p = kp
    g = torch.Generator().manual_seed(seed)
    x, up = torch.randn(n, k * p, generator=g), torch.randn(n, k * p, generator=g)
    ws = [torch.randn(k, k, generator=g), torch.randn(k, generator=g),
          torch.randn(p, p, generator=g), torch.randn(p, generator=g)]

    def run():
        xx = x.clone().requires_grad_()
        params = [w.clone().requires_grad_() for w in ws]
        u = D.des(xx, *params, act)
        grads = torch.autograd.grad(u, [xx, *params], up)
        return (u.detach(), *grads)
    out = _both(run)
    want = D.des_reference(x, *ws, act)
    for b in BACKENDS:
        torch.testing.assert_close(out[b][0], want, atol=1e-4, rtol=1e-4)
        for got, ref in zip(out[b][1:], out["reference"][1:]):
            torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-4)


@SLOW_OK
@given(groups=st.integers(1, 3), length=st.integers(1, 40), d=st.sampled_from([4, 8, 16]),
       neg_inf=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_window_attention_agrees_across_backends(groups, length, d, neg_inf, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v, up = (torch.randn(groups, length, d, generator=g) for _ in range(4))
    valid = torch.randint(1, length + 1, (groups,), generator=g)
    mask = float("-inf") if neg_inf else -100.0

    def run():
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        o = W.window_attention(qq, kk, vv, valid, d ** -0.5, mask)
        return (o.detach(), *torch.autograd.grad(o, [qq, kk, vv], up))
    out = _both(run)
    want = W.window_attention_reference(q, k, v, valid, d ** -0.5, mask)
    for b in BACKENDS:
        torch.testing.assert_close(out[b][0], want, atol=1e-5, rtol=1e-4)
        for got, ref in zip(out[b][1:], out["reference"][1:]):
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
