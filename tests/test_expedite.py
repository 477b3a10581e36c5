"""Expedite (chapter 05): token clustering as EM, reconstruction, baselines, clear errors."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import hrvit_edu
from hrvit_edu.models import expedite as E


def _scene(b=2, hh=12, ww=10, c=6, seed=0):
    """Tokens that are piecewise constant over a few blobs, plus noise: something to cluster."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(b, 4, c, generator=g, dtype=torch.float64) * 3
    yy, xx = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing="ij")
    seg = ((yy >= hh // 2).long() * 2 + (xx >= ww // 3).long()).flatten()
    return means[:, seg] + 0.3 * torch.randn(b, hh * ww, c, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("grid, clusters", [((12, 10), (4, 3)), ((7, 9), (3, 3)), ((5, 5), (5, 5)), ((8, 8), (1, 1))])
def test_initial_cells_are_nearest_resizing_of_the_index_image(grid, clusters):
    h, w = clusters
    idx = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    want = F.interpolate(idx, size=grid, mode="nearest").flatten().long()
    assert torch.equal(E.initial_cells(grid, clusters), want)


def test_locality_mask():
    grid, clusters = (12, 10), (4, 5)
    cells = E.initial_cells(grid, clusters)
    own = E.locality_mask(grid, clusters, lam=1)
    assert torch.equal(own, F.one_hot(cells, 20).bool())                          # lambda 1: own cell only
    assert E.locality_mask(grid, clusters, lam=9).all()                            # covers the whole grid
    m5 = E.locality_mask(grid, clusters, lam=3)
    assert m5.sum(1).max() == 9 and m5.sum(1).min() == 4                          # interior 3x3, corner 2x2
    assert bool(m5[torch.arange(120), cells].all())                               # a token may join its cell


@pytest.mark.parametrize("lam", [1, 3, 5])
def test_each_em_step_does_not_increase_the_free_energy(lam):
    x = _scene()
    grid, clusters, t = (12, 10), (4, 5), 0.5
    allowed = E.locality_mask(grid, clusters, lam)
    c = E.avgpool_tokens(x, grid, clusters)
    q = E.assignments(x, c, allowed, t)
    energies = [E.free_energy(x, c, q, t)]
    for _ in range(6):
        c = E.update_centres(x, q)                                                # M-step
        energies.append(E.free_energy(x, c, q, t))
        q = E.assignments(x, c, allowed, t)                                       # E-step
        energies.append(E.free_energy(x, c, q, t))
    steps = torch.stack(energies).diff(dim=0)
    assert (steps <= 1e-9 * torch.stack(energies).abs().max()).all(), steps
    if lam > 1:
        assert energies[-1].sum() < energies[0].sum()                             # and it does move
    else:                                                                         # one allowed cell: the
        torch.testing.assert_close(c, E.avgpool_tokens(x, grid, clusters))        # pooling baseline itself


def test_e_step_is_the_minimiser_over_q():
    x = _scene(seed=1)
    grid, clusters, t = (12, 10), (4, 5), 0.3
    allowed = E.locality_mask(grid, clusters, 3)
    c = E.avgpool_tokens(x, grid, clusters)
    q = E.assignments(x, c, allowed, t)
    assert torch.allclose(q.sum(-1), torch.ones(2, 120, dtype=x.dtype))
    assert (q[:, ~allowed] == 0).all()
    g = torch.Generator().manual_seed(0)
    noisy = (q + 0.05 * torch.rand(q.shape, generator=g, dtype=q.dtype)) * allowed
    noisy = noisy / noisy.sum(-1, keepdim=True)
    assert (E.free_energy(x, c, noisy, t) > E.free_energy(x, c, q, t)).all()


def test_clustering_conventions_and_output():
    x = _scene()
    c_t = E.token_clustering(x, (12, 10), (4, 5), t=0.02)
    c_tau = E.token_clustering(x, (12, 10), (4, 5), tau=50.0)
    torch.testing.assert_close(c_t, c_tau)
    c, q = E.token_clustering(x, (12, 10), (4, 5), iters=3, return_assignments=True)
    assert c.shape == (2, 20, 6) and q.shape == (2, 120, 20)
    torch.testing.assert_close(c, E.update_centres(x, q))                         # the last M-step's centres
    xh = x.half()
    ch = E.token_clustering(xh * 100, (12, 10), (4, 5))                           # norms beyond fp16's range
    assert ch.dtype == torch.float16 and torch.isfinite(ch).all()


def test_reconstruction_weights_and_the_stabilised_exponential():
    x = _scene()
    c = E.token_clustering(x, (12, 10), (4, 5))
    for norm in ("l1", "l2"):
        w = E.reconstruction_weights(x, c, t=0.5, k=4, norm=norm)
        assert ((w > 0).sum(-1) <= 4).all() and ((w > 0).sum(-1) >= 1).all()
        total = w.sum(-1) if norm == "l1" else w.norm(dim=-1)
        torch.testing.assert_close(total, torch.ones_like(total))
        torch.testing.assert_close(w, E.reconstruction_weights(x, c, t=0.5, k=4, norm=norm, stabilise=False))
    far = x * 1000                                                                # distances ~1e7: exp underflows
    w_raw = E.reconstruction_weights(far.float(), (c * 1000).float(), t=0.02, k=4, norm="l1", stabilise=False)
    w_ok = E.reconstruction_weights(far.float(), (c * 1000).float(), t=0.02, k=4, norm="l1")
    assert (w_raw.sum(-1) == 0).any() and torch.allclose(w_ok.sum(-1), torch.ones(2, 120))
    ties = E.reconstruction_weights(torch.zeros(1, 1, 2), torch.zeros(1, 3, 2), k=1, norm="l1")
    torch.testing.assert_close(ties, torch.full((1, 1, 3), 1 / 3))                # ties at the k-th kept


def test_reconstruction_reproduces_a_piecewise_constant_map():
    blocks = torch.randn(1, 4, 3, dtype=torch.float64) * 5                        # 2x2 cells of a 6x6 grid
    cell = E.initial_cells((6, 6), (2, 2))
    x = blocks[:, cell]
    c = E.token_clustering(x, (6, 6), (2, 2), lam=3, t=1.0)
    torch.testing.assert_close(c, blocks)
    for norm in ("l1", "l2"):
        torch.testing.assert_close(E.token_reconstruction(x, c, c, t=1.0, k=1, norm=norm), x)
    labels = E.hard_labels(x, c)
    assert torch.equal(labels[0], cell)
    torch.testing.assert_close(E.naive_unpooling(c, labels), x)
    flat = torch.ones(1, 4, 3)
    torch.testing.assert_close(E.bilinear_reconstruction(flat, (2, 2), (6, 6)), torch.ones(1, 36, 3))


def test_bad_input_raises():
    x = torch.randn(1, 12, 4)
    with pytest.raises(ValueError, match="holds 20 tokens"):
        E.token_clustering(torch.randn(1, 20 - 8, 4), (4, 5), (2, 2))
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        E.token_clustering(torch.randn(12, 4), (3, 4), (1, 2))
    with pytest.raises(TypeError, match="floating"):
        E.token_clustering(torch.ones(1, 12, 4, dtype=torch.int64), (3, 4), (1, 2))
    with pytest.raises(ValueError, match="odd"):
        E.token_clustering(x, (3, 4), (1, 2), lam=4)
    with pytest.raises(ValueError, match="finer"):
        E.token_clustering(x, (3, 4), (4, 4))
    with pytest.raises(ValueError, match="positive"):
        E.token_clustering(x, (3, 4), (1, 2), tau=0.0)
    c = E.token_clustering(x, (3, 4), (1, 2))
    with pytest.raises(ValueError, match="'l2'"):
        E.token_reconstruction(x, c, c, norm="softmax")
    with pytest.raises(ValueError, match="same"):
        E.token_reconstruction(x, c, torch.randn(1, 3, 4))


# ------------------------------------------------------------------ the ViT it expedites
from hrvit_edu.bench import count_flops  # noqa: E402


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return hrvit_edu.create_model("vit_seg_textbook", depth=4, dim=32, heads=2).eval()


def test_vit_shapes_any_size(vit):
    for size in ((64, 64), (72, 56)):
        with torch.no_grad():
            assert vit(torch.randn(2, 1, *size)).shape == (2, 11, *size)
    assert "vit_seg_textbook" in hrvit_edu.list_models(paper="expedite")


@pytest.mark.parametrize("beta", [None, 2])
def test_expedite_with_one_cluster_per_token_is_the_original_model(vit, beta):
    """clusters = the token grid, lambda 1, k 1: clustering returns the tokens, reconstruction the
    refined centres, so the expedited model computes exactly the original function."""
    x = torch.randn(2, 1, 64, 64)
    e = E.ExpediteConfig(alpha=1, clusters=(16, 16), beta=beta, lam=1, k=1, norm="l1")
    with torch.no_grad():
        torch.testing.assert_close(vit(x, expedite=e), vit(x), atol=1e-5, rtol=1e-5)


def test_expedite_saves_flops_and_keeps_the_output_shape(vit):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):       # attention as two bmm: flop_counter sees it
        base = count_flops(lambda: vit(x))
        for beta, bound in ((None, 0.7), (1, 1.0)):       # at width 32 the dense clustering itself
            e = E.ExpediteConfig(alpha=1, clusters=(8, 8), beta=beta, iters=1)    # costs about a block
            assert vit(x, expedite=e).shape == (1, 11, 64, 64)
            assert count_flops(lambda: vit(x, expedite=e)) < bound * base


def test_vit_bad_configuration_raises(vit):
    with pytest.raises(ValueError, match="do not fit"):
        vit(torch.randn(1, 1, 64, 64), expedite=E.ExpediteConfig(alpha=3, clusters=(8, 8), beta=2))
    with pytest.raises(ValueError, match="power of 2"):
        hrvit_edu.create_model("vit_seg_textbook", patch=6)
    with pytest.raises(ValueError, match="stem"):
        hrvit_edu.create_model("vit_seg_textbook", stem="pixel")
    with pytest.raises(ValueError, match="divisible"):
        hrvit_edu.create_model("vit_seg_textbook", dim=30, heads=4)
    with pytest.raises(ValueError):
        vit(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("grid, clusters, lam", [((12, 10), (4, 5), 3), ((12, 10), (4, 5), 5), ((13, 9), (4, 3), 3),
                                                 ((7, 7), (7, 7), 1), ((8, 6), (2, 3), 9)])
def test_local_clustering_equals_the_dense_official_form(grid, clusters, lam):
    x = _scene(hh=grid[0], ww=grid[1], seed=2)
    dense = E.token_clustering(x, grid, clusters, lam=lam, t=0.3, iters=4)
    local = E.token_clustering(x, grid, clusters, lam=lam, t=0.3, iters=4, impl="local")
    torch.testing.assert_close(local, dense, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="impl"):
        E.token_clustering(x, grid, clusters, impl="sparse")
    with pytest.raises(ValueError, match="dense"):
        E.token_clustering(x, grid, clusters, impl="local", return_assignments=True)


# ------------------------------------------------------------------------------ placements, baselines, windows
def _vit():
    torch.manual_seed(0)
    return hrvit_edu.create_model("vit_seg_textbook", num_classes=11, in_chans=1).eval()


def test_pooling_with_as_many_centres_as_tokens_is_the_original_model():
    model, x = _vit(), torch.randn(2, 1, 32, 32)
    grid = model.embed(x)[1]
    with torch.no_grad():
        ref = model(x)
        for restore in ("bilinear", "unpool"):
            got = model(x, expedite=E.ExpediteConfig(alpha=2, beta=2, clusters=grid, reduce="pool", restore=restore))
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_one_window_covering_the_grid_is_the_global_layer():
    model, x = _vit(), torch.randn(1, 1, 32, 32)
    grid = model.embed(x)[1]
    with torch.no_grad():
        glob = model(x, expedite=E.ExpediteConfig(alpha=3, beta=2, clusters=(5, 5), impl="dense"))
        win = model(x, expedite=E.ExpediteConfig(alpha=3, beta=2, clusters=(5, 5), window=grid[0], impl="dense"))
    torch.testing.assert_close(win, glob)


def test_windowed_clustering_clusters_each_window_on_its_own():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8 * 12, 6, generator=gen, dtype=torch.float64)
    e = E.ExpediteConfig(alpha=1, clusters=(2, 3), window=4, lam=3, t=0.5, iters=2, impl="dense")
    c, _ = E.reduce_tokens(x, (8, 12), e)
    assert e.reduced_grid((8, 12)) == (4, 9) and c.shape == (2, 36, 6)
    cmap = c.reshape(2, 4, 9, 6)
    xmap = x.reshape(2, 8, 12, 6)
    for wy in range(2):
        for wx in range(3):
            win = xmap[:, 4 * wy:4 * wy + 4, 4 * wx:4 * wx + 4].reshape(2, 16, 6)
            want = E.token_clustering(win, (4, 4), (2, 3), lam=3, t=0.5, iters=2)
            torch.testing.assert_close(cmap[:, 2 * wy:2 * wy + 2, 3 * wx:3 * wx + 3].reshape(2, 6, 6), want)
    with pytest.raises(ValueError, match="does not split"):
        E.reduce_tokens(x, (8, 12), dataclasses.replace(e, window=5))


def test_expedite_config_refuses_unknown_methods():
    for bad in (dict(reduce="kmeans"), dict(restore="nearest"), dict(impl="sparse"), dict(norm="l3"), dict(window=0)):
        with pytest.raises(ValueError, match="ExpediteConfig"):
            E.ExpediteConfig(alpha=1, clusters=(2, 2), **bad)


def test_vit_macs_counts_what_flop_counter_counts():
    """Blocks and head on N tokens, then on M pooled tokens (pooling and bilinear resizing are not
    GEMMs, so flop_counter sees exactly the blocks and the head).  The CPU's fused attention kernel
    is invisible to flop_counter, so attention runs on the math backend (two bmm) here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    model, x = _vit(), torch.randn(1, 1, 64, 64)
    grid = model.embed(x)[1]
    stem = FlopCounterMode(display=False)
    with stem, torch.no_grad():
        model.stem(x)
    for e in (None, E.ExpediteConfig(alpha=3, clusters=(6, 6), reduce="pool", restore="bilinear"),
              E.ExpediteConfig(alpha=3, beta=2, clusters=(6, 6), reduce="pool", restore="bilinear")):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            model(x, expedite=e)
        want = E.vit_macs(model.cfg, grid, e)
        assert (counter.get_total_flops() - stem.get_total_flops()) // 2 == want["blocks"] + want["head"], e


def test_evaluating_an_expedited_model_leaves_it_in_eval_mode():
    """evaluate() restores the wrapper's mode; the wrapper must mirror the model's, or the model's
    BatchNorm would be left training and update its statistics on the next forward."""
    from hrvit_edu.data import DigitScenes
    from hrvit_edu.profiles import get_profile
    model = _vit()
    E.miou_of(model, DigitScenes("test", get_profile("ci").scenes), E.ExpediteConfig(alpha=2, clusters=(8, 8)))
    assert not model.training and not any(m.training for m in model.modules())
