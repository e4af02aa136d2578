"""The ``'newton_lowrank'`` landmark solver: the 20-step Newton function as ``c Ah`` plus a certified low-rank
correction, with the eigendecomposition where the certificate fails (:mod:`mmsoft.ops.newton_lowrank`)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from utils import landmark_solve, rel_err

import mmsoft.ops.newton_lowrank as nl
from mmsoft.models.backbones.soft import SOFT
from mmsoft.models.backbones.soft_converter import soft_convert
from mmsoft.ops import landmark_inverse, soft_attention
from mmsoft.ops.flops import newton_lowrank_flops
from mmsoft.ops.landmark_solvers import newton_eigh_factors
from mmsoft.ops.reference import gaussian_kernel, newton_alpha
from mmsoft.utils.complexity import count_flops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.reference_weights import seeded_reference_state_dict  # noqa: E402

GOLDENS = Path(__file__).resolve().parents[1] / "data" / "soft_reference_goldens.npz"


def landmarks(batch: int, m: int, scale: float, seed: int = 0, d: int = 4) -> torch.Tensor:
    """float64 landmarks ``(batch, 1, m, d)``: scale 0.15 gives a concentrated spectrum (at m = 120, 12 eigenvalues
    above ``lam* / 40``: a rank-24 subspace suffices), scale 2 a flat one (kernel ~ identity, every eigenvalue far
    above ``lam*``)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, m, d, generator=gen, dtype=torch.float64) * scale


def rhs(k: torch.Tensor, c: int = 5, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*k.shape[:-1], c, generator=gen, dtype=k.dtype)


def newton_exact(k: torch.Tensor, x: torch.Tensor, num_iters: int = 20) -> torch.Tensor:
    """The float64 reference: ``num_iters`` Newton-Schulz steps (sym-normalised ``P``) applied to ``x``."""
    return landmark_inverse(k.double(), sym_norm=True, num_iters=num_iters) @ x.double()


def factors_of(k: torch.Tensor, num_iters: int = 20, **kwargs) -> nl.LowrankFactors:
    mat = gaussian_kernel(k, k)
    return nl.newton_lowrank_factors(mat, mat.double(), num_iters, **kwargs)


@pytest.fixture
def small_rank(monkeypatch):
    """A rank well below m, so that small test problems exercise the low-rank path."""
    monkeypatch.setattr(nl, "LOWRANK_RANK", 24)


@pytest.mark.parametrize("num_iters", [0, 5, 20])
def test_low_rank_path_is_newton_float64(small_rank, num_iters):
    k = landmarks(2, 120, 0.15)
    x = rhs(k)
    factors = factors_of(k, num_iters, rank=24)
    assert not factors.exact.any() and factors.eigvecs is None  # certified: no eigendecomposition at all
    out = landmark_solve(k, x, solver="newton_lowrank", num_iters=num_iters)
    assert rel_err(out, newton_exact(k, x, num_iters)) < 1e-9
    # and the input really is unconverged (not the inverse), with most of the spectrum outside the rank-24 subspace
    kernel = gaussian_kernel(k, k)
    assert rel_err(torch.linalg.solve(kernel, x), landmark_inverse(k, sym_norm=False) @ x) > 1e-2


def test_flat_spectrum_falls_back_per_matrix(small_rank):
    # image 0 concentrated (low rank certified), image 1 flat (every eigenvalue inverted: needs all 120 eigenpairs)
    k = torch.cat([landmarks(1, 120, 0.15), landmarks(1, 120, 2.0, seed=3)])
    x = rhs(k)
    factors = factors_of(k, rank=24)
    assert factors.exact.tolist() == [[False], [True]]
    out = landmark_solve(k, x, solver="newton_lowrank")
    assert rel_err(out, newton_exact(k, x)) < 1e-9
    for i in range(2):  # each image as computed alone
        assert rel_err(out[i], landmark_solve(k[i:i + 1], x[i:i + 1], solver="newton_lowrank")[0]) < 1e-12
    # all flat: rejected from the float32 iterate, the float64 low-rank steps are skipped
    flat = factors_of(k[1:], rank=24)
    assert flat.exact.all() and flat.q is None


@pytest.mark.parametrize("scale", [0.15, 0.3, 0.6])
@pytest.mark.parametrize("rank", [8, 24, 48])
def test_certificate_bounds_the_error(scale, rank):
    # The certificate estimates the relative spectral-norm error of the low-rank P; it must not understate it, or an
    # inaccurate P would pass. Measured against the exact P of the eigendecomposition, forcing the low rank.
    k = landmarks(1, 96, scale, seed=2, d=8)
    mat = gaussian_kernel(k, k)
    alpha = newton_alpha(mat)
    *parts, err, _ = nl.lowrank_factors(mat, mat, alpha, 20, rank=rank)
    factors = nl.LowrankFactors(*parts, 2.0 ** 20 * alpha, torch.zeros(1, 1, dtype=torch.bool), None, None)
    low = nl.apply_lowrank_factors(mat, factors, torch.eye(96, dtype=torch.float64).expand_as(mat))
    vecs, filt = newton_eigh_factors(mat, 20)
    exact = (vecs * filt.unsqueeze(-2)) @ vecs.transpose(-1, -2)
    actual = (torch.linalg.matrix_norm(low - exact, ord=2) / torch.linalg.matrix_norm(exact, ord=2)).item()
    assert actual <= err.item() + 1e-12, (actual, err.item())


def test_newton_series_is_the_newton_polynomial():
    # f(T) = T (f(T) T^-1) is num_iters Newton-Schulz steps from alpha T, on a matrix with eigenvalues across the
    # threshold (some inverted, some damped, some ~0).
    t = torch.diag(torch.tensor([3.0, 1.0, 0.05, 1e-3, 0.0], dtype=torch.float64))
    rot = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).Q
    t = rot @ t @ rot.T
    alpha = torch.tensor([[0.02]], dtype=torch.float64)
    for num_iters in (0, 1, 7, 20):
        v = alpha * t
        for _ in range(num_iters):
            v = 2 * v - v @ t @ v
        f = t @ nl.newton_series(t, alpha, num_iters)
        torch.testing.assert_close(f, v, rtol=0, atol=1e-10 * v.abs().max().item())


def test_gradients_equal_newton_unconverged_low_rank_path(small_rank):
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 1, 150, 4, generator=gen, dtype=torch.float64) * 0.3
    k = landmarks(2, 100, 0.15)
    v = torch.randn(2, 1, 150, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 1, 150, 4, generator=gen, dtype=torch.float64)
    assert not factors_of(k, rank=24).exact.any()
    grads = {}
    for name in ("newton", "newton_lowrank"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        soft_attention(*leaves, impl="reference", solver=name).backward(g)
        grads[name] = [t.grad for t in leaves]
    for a, b in zip(grads["newton_lowrank"], grads["newton"]):
        assert rel_err(a, b) < 1e-9


def test_gradcheck_float64(small_rank):
    # The closed-form backward is the derivative of an exact inverse: gradcheck holds where Newton has converged
    # (spread landmarks, 30 steps). m = 4 <= rank: the low-rank subspace is the whole space. m = 60 > rank 24: the
    # flat spectrum takes the eigendecomposition. (Where the low rank is certified, the gradients equal newton's,
    # see test_gradients_equal_newton_unconverged_low_rank_path.)
    gen = torch.Generator().manual_seed(3)
    for m, d, n, spread in ((4, 3, 7, 1.5), (60, 8, 9, 3.0)):
        q = torch.randn(1, 1, n, d, generator=gen, dtype=torch.float64, requires_grad=True)
        k = (torch.randn(1, 1, m, d, generator=gen, dtype=torch.float64) * spread).requires_grad_()
        v = torch.randn(1, 1, n, 2, generator=gen, dtype=torch.float64, requires_grad=True)
        assert factors_of(k.detach(), 30, rank=24).exact.all().item() == (m > 24)
        assert torch.autograd.gradcheck(
            lambda q, k, v: soft_attention(q, k, v, num_iters=30, impl="reference", solver="newton_lowrank"),
            (q, k, v))


def second_derivatives(solver: str):
    """Gradient of a random projection of dL/dk (L a random projection of the output) w.r.t. q, k and v, on a
    60-landmark kernel whose low rank is certified at rank 24 (unconverged Newton)."""
    gen = torch.Generator().manual_seed(3)
    q = (torch.randn(1, 1, 30, 4, generator=gen, dtype=torch.float64) * 0.3).requires_grad_()
    k = landmarks(1, 60, 0.15, seed=6).requires_grad_()
    v = torch.randn(1, 1, 30, 3, generator=gen, dtype=torch.float64).requires_grad_()
    out = soft_attention(q, k, v, impl="reference", solver=solver)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (dk,) = torch.autograd.grad(out, k, g, create_graph=True)
    w = torch.randn(dk.shape, generator=gen, dtype=torch.float64)
    return torch.autograd.grad(dk, (q, k, v), w)


def test_second_derivatives_equal_newton(small_rank):
    for got, want in zip(second_derivatives("newton_lowrank"), second_derivatives("newton")):
        assert rel_err(got, want) < 1e-8


@pytest.mark.parametrize("spread", [0.15, 2.0])
def test_traces_without_graph_breaks(small_rank, spread):
    # torch.cond replaces the eager host read: both branches (low rank certified / eigendecomposition) trace.
    k = landmarks(2, 60, spread).float()
    q, v = torch.randn(2, 1, 40, 4), torch.randn(2, 1, 40, 4)
    assert factors_of(k.double(), rank=24).exact.all().item() == (spread > 1)
    fn = torch.compile(lambda q, k, v: soft_attention(q, k, v, impl="reference", solver="newton_lowrank"),
                       backend="eager", fullgraph=True)
    eager = soft_attention(q, k, v, impl="reference", solver="newton_lowrank")
    assert rel_err(fn(q, k, v), eager) < 1e-6


def test_non_finite_matrix_is_nan_and_stays_in_its_image(small_rank):
    k = torch.cat([landmarks(1, 60, 0.15), landmarks(1, 60, 0.15, seed=7)]).expand(2, 2, 60, 4).clone()
    k[0, 1, 3, 2] = float("nan")
    x = rhs(k)
    out = landmark_solve(k, x, solver="newton_lowrank")
    assert torch.isnan(out[0]).all()  # both heads of image 0: alpha is shared by an image's heads, as in Newton
    assert torch.equal(out[1], landmark_solve(k[1:], x[1:], solver="newton_lowrank")[0])
    factors = factors_of(k, rank=24)
    assert factors.exact.tolist() == [[True, True], [False, False]]


def test_golden_backbone_takes_the_low_rank_and_matches_exact_newton(monkeypatch):
    # The golden seeded weights (trained-like landmark kernels) on the golden photo at 256x384: 96 landmarks per head
    # in stages 1-3. Rank 64 < 96 exercises the low rank as at detection size; every one of the 40 matrices must be
    # certified and the stage maps must match the exact float64 Newton backbone to 1e-5 (float32 rounding ~1e-6).
    monkeypatch.setattr(nl, "LOWRANK_RANK", 64)
    seen = []
    original = nl.newton_lowrank_factors

    def recording(*args, **kwargs):
        factors = original(*args, **kwargs)
        seen.append((args[0].shape[-1], factors.exact))
        return factors

    monkeypatch.setattr(nl, "newton_lowrank_factors", recording)
    state = soft_convert(seeded_reference_state_dict("soft_norm_tiny", 0))
    models = {}
    for solver, dtype in (("newton", torch.float64), ("newton_lowrank", torch.float32)):
        models[solver] = SOFT(arch="tiny", with_cls_token=True, drop_path_rate=0.0, landmark_solver=solver)
        models[solver].load_state_dict(state)
        models[solver].to(dtype).eval()
    photo = torch.from_numpy(np.load(GOLDENS)["image/photo"]).permute(2, 0, 1)[None].double()
    mean = torch.tensor([123.675, 116.28, 103.53], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375], dtype=torch.float64).view(1, 3, 1, 1)
    x = F.interpolate((photo - mean) / std, size=(256, 384), mode="bilinear", align_corners=False)
    with torch.no_grad():
        exact = models["newton"](x)
        ours = models["newton_lowrank"](x.float())
    assert sum(e.numel() for _, e in seen) == 40 and all(m == 96 and not e.any() for m, e in seen), seen
    for a, b in zip(ours, exact):
        assert rel_err(a, b) < 1e-5


def test_flops_are_counted():
    model = SOFT(arch="tiny", drop_path_rate=0.0, landmark_solver="newton_lowrank").eval()
    images = torch.randn(1, 3, 64, 96)
    # 6 landmarks per head, head dim 32, 2*1 + 4*2 + 10*3 = 40 head-layers; the rank is min(64, 6)
    per_head = newton_lowrank_flops(6, 32, 20, nl.LOWRANK_RANK, nl.LOWRANK_POWER_ITERS)
    for exact_newton in (False, True):  # the iteration count is recorded on the node, also when tracing skips it
        counted = count_flops(model, (images,), exact_newton=exact_newton).by_operator()
        assert "newton_pinv" not in counted and counted["newton_lowrank"] == 40 * per_head
    assert newton_lowrank_flops(1050, 32, 20, 64, 2) < newton_lowrank_flops(1050, 32, 20, 1050, 2) / 10


def test_tail_from_the_factor_gemm_equals_a_separate_pass():
    """``rhs``: ``Ah Pi x`` comes out of the GEMM that forms ``Ah Q`` (one pass over ``Ah``); P x is then the same as
    from factors built without it (float64: to rounding)."""
    k = landmarks(2, 120, 0.15, seed=3)
    mat = gaussian_kernel(k, k)
    x = rhs(k)
    with_rhs = nl.newton_lowrank_factors(mat, mat, 20, rank=24, rhs=x)
    without = nl.newton_lowrank_factors(mat, mat, 20, rank=24)
    assert with_rhs.tail_rhs is not None and without.tail_rhs is None and not with_rhs.exact.any()
    got, want = nl.apply_lowrank_factors(mat, with_rhs, x), nl.apply_lowrank_factors(mat, without, x)
    assert torch.allclose(got, want, rtol=0, atol=1e-13 * want.abs().max().item())


def test_float64_matrix_blocks_read_the_same_values(monkeypatch):
    """Float64Matrix of a float32 CPU matrix reads it a row block at a time (here blocks of 7 rows, a partial last
    one): products, row sums and squared row norms equal those of the whole float64 copy, as does the solver's
    result; a float64 matrix is used as it is (no copy)."""
    monkeypatch.setattr(nl, "FLOAT64_BLOCK_BYTES", 2 * 3 * 120 * 8 * 7)  # (2, 3) matrices of m = 120: 7 rows
    k = landmarks(2, 120, 0.15, seed=4).expand(2, 3, 120, 4).float()
    mat = gaussian_kernel(k, k)
    blocked, whole = nl.Float64Matrix(mat), mat.double()
    assert blocked._whole is None
    y = torch.randn(2, 3, 120, 9, dtype=torch.float64)
    assert torch.allclose(blocked.matmul(y), whole @ y, rtol=1e-14, atol=1e-14)
    sums, norms_sq = blocked.row_sums_and_norms_sq()
    assert torch.allclose(sums, whole.sum(-1), rtol=1e-14, atol=0)
    assert torch.allclose(norms_sq, whole.square().sum(-1), rtol=1e-14, atol=0)
    assert torch.equal(blocked.whole(), whole)
    x = torch.randn(2, 3, 120, 5)
    got = nl.apply_lowrank_factors(blocked, nl.newton_lowrank_factors(mat, blocked, 20, rank=24, rhs=x), x)
    want = nl.apply_lowrank_factors(whole, nl.newton_lowrank_factors(mat, whole, 20, rank=24, rhs=x), x)
    assert torch.allclose(got, want, rtol=0, atol=1e-12 * want.abs().max().item())
    assert nl.Float64Matrix(whole).whole() is whole
