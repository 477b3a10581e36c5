"""Expedite's kernels (chapter 05): local EM clustering and fused top-k reconstruction, against
the dense official formulation and the torch references."""
import pytest
import torch

from hrvit_edu import kernels
from hrvit_edu.kernels import token_clustering as K
from hrvit_edu.models import expedite as E

needs_triton = pytest.mark.skipif(not kernels.triton_usable(torch.zeros(1)),
                                  reason="Triton kernels are not runnable here (no Triton)")

# (token grid, cluster grid, lambda): integer and non-integer cell sizes, odd grids, lambda 1/3/5,
# a neighbourhood larger than the grid, clusters == tokens
EM_CASES = [((6, 8), (3, 4), 3), ((7, 9), (3, 4), 5), ((10, 10), (7, 7), 5), ((5, 6), (5, 6), 3),
            ((9, 5), (4, 2), 1), ((4, 4), (2, 2), 7)]


def _poisoned(b, n, c, gen, dtype=torch.float32, pad=5):
    """(B, N, C) features viewed out of a NaN-filled (B, N, C + pad) buffer: a load that reads past
    C (a missing channel mask) returns NaN and shows up in every output."""
    buf = torch.full((b, n, c + pad), float("nan"), dtype=dtype)
    x = buf[..., :c]
    x.copy_(torch.randn(b, n, c, generator=gen).to(dtype))
    return x


def test_cell_members_partition_the_tokens():
    for grid, clusters, _ in EM_CASES:
        members, valid = K.cell_members(grid, clusters)
        cells = K.initial_cells(grid, clusters)
        got = sorted(members[valid].tolist())
        assert got == list(range(grid[0] * grid[1]))                        # every token exactly once
        for j in range(clusters[0] * clusters[1]):
            assert (cells[members[j][valid[j]]] == j).all()                 # in its own cell
        assert members.shape[1] == int(torch.bincount(cells).max())           # padded to the largest cell


@pytest.mark.parametrize("grid, clusters, lam", EM_CASES)
def test_local_reference_equals_the_dense_official_em(grid, clusters, lam):
    gen = torch.Generator().manual_seed(sum(grid) + lam)
    x = torch.randn(2, grid[0] * grid[1], 7, generator=gen, dtype=torch.float64)
    c0 = E.avgpool_tokens(x, grid, clusters)
    dense = E.token_clustering(x, grid, clusters, lam=lam, t=0.4, iters=3)
    for tile in (1, 2, 4):                                  # per cell, and blocks of cells with halos
        local = K.local_em_reference(x, c0, grid, clusters, lam=lam, t=0.4, iters=3, tile=tile)
        torch.testing.assert_close(local, dense, atol=1e-10, rtol=1e-10)


@needs_triton
@pytest.mark.parametrize("grid, clusters, lam", EM_CASES)
def test_local_em_kernel_matches_reference(grid, clusters, lam):
    """fp32 and fp16 inputs, C = 37 (not a multiple of the 32-wide channel tile), features read in
    place from a NaN-poisoned wider buffer; several token blocks per image at 10 x 10."""
    gen = torch.Generator().manual_seed(7 * sum(grid) + lam)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-3)):
        x = _poisoned(2, grid[0] * grid[1], 37, gen, dtype)
        c0 = E.avgpool_tokens(x, grid, clusters)
        want = K.local_em_reference(x.float(), c0.float(), grid, clusters, lam=lam, t=0.3, iters=3)
        got = K.local_em_triton(x, c0, grid, clusters, lam=lam, t=0.3, iters=3)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@needs_triton
def test_the_op_and_the_model_path_take_the_kernel(monkeypatch):
    calls = []
    real = K.local_em_triton
    monkeypatch.setattr(K, "local_em_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(1, 36, 16)
    with kernels.use_backend("triton"):
        got = E.token_clustering(x, (6, 6), (3, 3), lam=3, iters=2, impl="local")
    assert calls, "impl='local' did not reach the Triton kernel under the triton backend"
    torch.testing.assert_close(got, E.token_clustering(x, (6, 6), (3, 3), lam=3, iters=2), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ reconstruction
REC_CASES = [(2, 30, 13, 9, 11, 5), (1, 17, 20, 16, 3, 20), (2, 40, 7, 33, 5, 25), (1, 19, 16, 8, 40, 1)]


@needs_triton
@pytest.mark.parametrize("b, n, m, c, co, k", REC_CASES)
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_topk_kernel_matches_reference(b, n, m, c, co, k, norm):
    """M not a power of two, k > M, k = 1, C and C' not tile multiples, NaN-poisoned buffers;
    fp32 and fp16."""
    gen = torch.Generator().manual_seed(n * m + k)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
        x_a, c_a = _poisoned(b, n, c, gen, dtype), _poisoned(b, m, c, gen, dtype)
        c_hat = _poisoned(b, m, co, gen, dtype)
        want = K.topk_reconstruction_reference(x_a.float(), c_a.float(), c_hat.float(), 0.5, k, norm)
        got = K.topk_reconstruction_triton(x_a, c_a, c_hat, 0.5, k, norm)
        assert got.dtype == dtype and torch.isfinite(got).all()
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@needs_triton
def test_topk_kernel_keeps_ties_at_the_kth_weight():
    """Three centres at exactly the same place tie for second place: k = 2 keeps all three, as the
    reference (topk + >=) does."""
    c_a = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    x_a = torch.zeros(1, 1, 2)
    c_hat = torch.arange(5.0).reshape(1, 5, 1)
    got = K.topk_reconstruction_triton(x_a, c_a, c_hat, 1.0, 2, "l1")
    want = K.topk_reconstruction_reference(x_a, c_a, c_hat, 1.0, 2, "l1")
    torch.testing.assert_close(got, want)
    e = torch.exp(torch.tensor(-1.0))
    torch.testing.assert_close(got[0, 0, 0], (1 + 2 + 3) * e / (1 + 3 * e))      # centre 0 holds value 0


def test_stabilised_weights_survive_distances_that_underflow():
    """Features 100x larger: exp(-t D) is 0 for every centre in fp32, so the official form's rows
    vanish; the stabilised rows keep their nearest centre with weight 1."""
    gen = torch.Generator().manual_seed(0)
    x_a, c_a = 100 * torch.randn(1, 12, 16, generator=gen), 100 * torch.randn(1, 5, 16, generator=gen)
    raw = K.topk_weights_reference(x_a, c_a, 0.02, 3, "l2", stabilise=False)
    assert (raw.sum(-1) == 0).all()
    w = K.topk_weights_reference(x_a, c_a, 0.02, 3, "l2")
    torch.testing.assert_close(w.amax(-1), torch.ones(1, 12))
    if kernels.triton_usable(x_a):
        got = K.topk_reconstruction_triton(x_a, c_a, torch.eye(5)[None], 0.02, 3, "l2")
        torch.testing.assert_close(got, w)


# ------------------------------------------------------------------------------ errors, op registration
def test_bad_input_raises_clearly():
    x, c = torch.randn(1, 36, 8), torch.randn(1, 9, 8)
    with pytest.raises(ValueError, match="N=36, M=9; got N=36, M=9|need N"):
        K.local_em(x, c, [6, 5], [3, 3])
    with pytest.raises(ValueError, match="positive odd"):
        K.local_em(x, c, [6, 6], [3, 3], lam=4)
    with pytest.raises(ValueError, match="finer than"):
        K.local_em(torch.randn(1, 4, 8), torch.randn(1, 9, 8), [2, 2], [3, 3])
    with pytest.raises(TypeError, match="floating-point"):
        K.local_em(x.long(), c, [6, 6], [3, 3])
    with pytest.raises(ValueError, match="must be 3-D"):
        K.topk_reconstruction(x[0], c, c)
    with pytest.raises(ValueError, match="do not match"):
        K.topk_reconstruction(x, c, torch.randn(1, 8, 4))
    with pytest.raises(ValueError, match="norm must be"):
        K.topk_reconstruction(x, c, c, 0.02, 3, "softmax")
    if kernels.HAS_TRITON:
        with pytest.raises(TypeError, match="fp64"):
            K.topk_reconstruction_triton(x.double(), c.double(), c.double())
        with pytest.raises(ValueError, match="M=5000"):
            K.topk_reconstruction_triton(torch.randn(1, 3, 2), torch.randn(1, 5000, 2), torch.randn(1, 5000, 2))


@pytest.mark.parametrize("backend", ["triton", "reference"] if kernels.HAS_TRITON else ["reference"])
def test_opcheck(backend):
    gen = torch.Generator().manual_seed(3)
    x, c = torch.randn(1, 30, 6, generator=gen), torch.randn(1, 6, 6, generator=gen)
    with kernels.use_backend(backend):
        torch.library.opcheck(K.local_em, (x, c, [5, 6], [2, 3], 3, 0.5, 2))
        torch.library.opcheck(K.topk_reconstruction, (x, c, torch.randn(1, 6, 4, generator=gen), 0.5, 4, "l1"))


def test_model_runs_both_impls_to_the_same_logits():
    """In fp64: in fp32 a rounding difference can swap which centre is the k-th nearest, and a
    top-k selection is discontinuous in its inputs."""
    import hrvit_edu
    torch.manual_seed(0)
    model = hrvit_edu.create_model("vit_seg_textbook", num_classes=11, in_chans=1).eval().double()
    x = torch.randn(2, 1, 48, 48, dtype=torch.float64)
    with torch.no_grad(), kernels.use_backend("reference"):
        dense = model(x, expedite=E.ExpediteConfig(alpha=2, clusters=(8, 8), impl="dense"))
        local = model(x, expedite=E.ExpediteConfig(alpha=2, clusters=(8, 8), impl="local"))
        mid = model(x, expedite=E.ExpediteConfig(alpha=2, beta=3, clusters=(8, 8), impl="local"))
    torch.testing.assert_close(local, dense, atol=1e-8, rtol=1e-8)
    assert mid.shape == dense.shape
