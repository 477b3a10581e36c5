import pytest
import torch

from hrvit_edu import kernels
from hrvit_edu.kernels import softmax as K
from hrvit_edu.kernels.testing import check_against_reference, gradcheck_op

needs_triton = pytest.mark.skipif(not kernels.triton_usable(torch.zeros(1)),
                                  reason="Triton kernels are not runnable here (no Triton)")


def _inputs(shape, dtype, gen):
    return [(4 * torch.randn(shape, generator=gen)).to(dtype)]


@needs_triton
def test_forward_and_gradients_match_reference_on_awkward_shapes():
    # 1, 15, 16, 17: around a block boundary; 77 and 130: not powers of two; 3-D input
    rep = check_against_reference(K.softmax, K.softmax_reference, _inputs,
                                  shapes=[(1, 1), (2, 15), (3, 16), (4, 17), (37, 77), (2, 3, 130)],
                                  dtypes=(torch.float32, torch.float16))
    assert rep.cases == 12


@needs_triton
def test_kernel_is_really_used(monkeypatch):
    calls = []
    real = K.softmax_rows_triton
    monkeypatch.setattr(K, "softmax_rows_triton", lambda x: calls.append(1) or real(x))
    K.softmax(torch.randn(3, 5))
    assert calls
    with kernels.use_backend("reference"):
        K.softmax(torch.randn(3, 5))
    assert len(calls) == 1


@needs_triton
def test_masked_lanes_never_leak():
    """Rows shorter than the block: padding lanes must not enter max or sum (out-of-bounds
    loads are silent in the interpreter, so we check the values, not for a crash)."""
    x = torch.full((2, 17), -1e4)
    x[:, 16] = 0.0                       # last real lane; lanes 17..31 are padding
    y = K.softmax_rows(x)
    torch.testing.assert_close(y.sum(-1), torch.ones(2))
    assert y[:, 16].min() > 0.999


@needs_triton
def test_rows_sum_to_one_and_extreme_values():
    x = torch.tensor([[1e4, 0.0, -1e4], [-3.0, -3.0, -3.0]])
    y = K.softmax(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(2))


def test_gradcheck_float64():
    assert gradcheck_op(lambda t: K.softmax(t, dim=0), [torch.randn(5, 3)])


def test_opcheck_registration():
    torch.library.opcheck(K.softmax_rows, (torch.randn(6, 19, requires_grad=True),))
    torch.library.opcheck(K.softmax_rows_backward, (torch.softmax(torch.randn(4, 7), -1), torch.randn(4, 7)))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(backend):
    f = torch.compile(lambda t: K.softmax(t, dim=1) * 3, fullgraph=True, backend=backend)
    x = torch.randn(2, 9, 4, requires_grad=True)
    y = f(x)
    torch.testing.assert_close(y, 3 * torch.softmax(x, 1))
    y.sum().backward()
    assert x.grad is not None


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        K.softmax_rows(torch.randn(3, 4, 5))
    with pytest.raises(TypeError, match="floating"):
        K.softmax(torch.arange(4))
    with pytest.raises(ValueError, match="at least one"):
        K.softmax(torch.tensor(1.0))


def test_backend_switch():
    assert kernels.get_backend() == "auto"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.set_backend("cuda-please")
    with kernels.use_backend("reference"):
        assert not kernels.triton_usable(torch.zeros(1))
        torch.testing.assert_close(K.softmax(torch.ones(2, 4)), torch.full((2, 4), 0.25))
    assert kernels.get_backend() == "auto"
    assert "kernels:" in kernels.describe()


def test_interpreter_is_set_before_kernels_on_cpu():
    import os
    if kernels.HAS_TRITON and not kernels.HAS_CUDA:
        assert os.environ.get("TRITON_INTERPRET") == "1" and kernels.interpreting()
        assert "interpreter" in kernels.describe()
        assert "no CUDA" in kernels.skip_reason()


def test_without_triton_everything_falls_back_to_the_reference(monkeypatch):
    """macOS/Windows: no Triton. The ops still run (reference path) and say why kernels skip."""
    from hrvit_edu.kernels import _runtime
    monkeypatch.setattr(_runtime, "HAS_TRITON", False)
    assert not kernels.triton_usable(torch.zeros(1))
    assert "not installed" in _runtime.describe() and "not installed" in _runtime.skip_reason()
    with pytest.raises(RuntimeError, match="not installed"):
        _runtime.set_backend("triton")
    x = torch.randn(3, 7, requires_grad=True)
    y = K.softmax(x)
    torch.testing.assert_close(y, torch.softmax(x, -1))
    y.sum().backward()
