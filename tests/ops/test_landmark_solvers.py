"""Landmark solvers (``soft_attention(..., solver=...)``, ``SOFT(landmark_solver=...)``): values, gradients, batch
independence, argument checks."""
import pytest
import torch
from utils import landmark_solve, rel_err

from mmsoft.models.backbones.soft import SOFT
from mmsoft.ops import landmark_inverse, soft_attention
from mmsoft.ops.landmark_solvers import (
    CHOLESKY_EPS,
    SOLVERS,
    LandmarkSolver,
    newton_filter,
    resolve_solver,
    ridge_cholesky_solve,
)
from mmsoft.ops.reference import gaussian_kernel


def _spread_landmarks(batch: int, m: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """Far-apart landmarks: a well-conditioned kernel (eigenvalues near 1) on which Newton-Schulz converges."""
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(batch, m, d, generator=gen, dtype=torch.float64) * 2.0).to(dtype)


def _clustered_landmarks(batch: int, m: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """Landmarks as a real layer makes them (close together): an ill-conditioned kernel, Newton far from converged."""
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(batch, m, d, generator=gen, dtype=torch.float64) * 0.3).to(dtype)


@pytest.mark.parametrize("sym_norm", [True, False])
def test_all_solvers_match_exact_inverse_when_converged_float64(sym_norm):
    k = _spread_landmarks(3, 24, 8, torch.float64)
    x = torch.randn(3, 24, 5, dtype=torch.float64)
    kernel = gaussian_kernel(k, k)
    exact = torch.linalg.solve(kernel, x if not sym_norm else kernel.sum(-1, keepdim=True).rsqrt() * x)
    if sym_norm:
        exact = kernel.sum(-1, keepdim=True).rsqrt() * exact
    for solver in SOLVERS:
        out = landmark_solve(k, x, sym_norm=sym_norm, num_iters=30, solver=solver)
        assert out.dtype == torch.float64
        # Newton converges to machine precision here; the Cholesky ridge (1e-6 of the unit diagonal) shifts every
        # eigenvalue by 1e-6, so its relative error is about 1e-6 / lambda_min.
        tol = 1e-10 if solver != "cholesky" else 10 * CHOLESKY_EPS
        assert rel_err(out, exact) < tol, solver


def test_cholesky_is_the_ridge_solve_float64():
    k = _clustered_landmarks(2, 40, 8, torch.float64)
    x = torch.randn(2, 40, 4, dtype=torch.float64)
    kernel = gaussian_kernel(k, k)
    d = kernel.sum(-1, keepdim=True).rsqrt()
    expected = d * torch.linalg.solve(kernel + CHOLESKY_EPS * torch.eye(40, dtype=torch.float64), d * x)
    assert rel_err(landmark_solve(k, x, solver="cholesky"), expected) < 1e-8


@pytest.mark.parametrize("num_iters", [0, 1, 5, 20])
def test_newton_thin_is_newton_even_unconverged_float64(num_iters):
    # The same function as 'newton' on any input, also on an ill-conditioned kernel where 20 steps are far from pinv.
    k = _clustered_landmarks(2, 64, 8, torch.float64)
    x = torch.randn(2, 64, 6, dtype=torch.float64)
    expected = landmark_inverse(k, sym_norm=True, num_iters=num_iters) @ x
    assert rel_err(landmark_solve(k, x, num_iters=num_iters, solver="newton_thin"), expected) < 1e-10
    kernel = gaussian_kernel(k, k)
    assert rel_err(torch.linalg.solve(kernel, x), expected) > 1e-2  # the test input really is unconverged


@pytest.mark.parametrize("num_iters", [0, 1, 5, 20, 40])
@pytest.mark.parametrize("scale", [2.0, 0.3, 0.1])
def test_newton_eigh_is_newton_float64(num_iters, scale):
    # The closed form of the Newton filter evaluates the same function as the iterations, converged (scale 2) or
    # far from it (0.3, 0.1: kernel eigenvalues down to 1e-8 of max_row_sum), also for 0 steps (alpha Ah).
    k = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * scale
    x = torch.randn(2, 64, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = landmark_inverse(k, sym_norm=True, num_iters=num_iters) @ x
    # 40 steps at scale 0.1 invert eigenvalues down to ~1e-7: float64 rounding times that condition number, ~2e-10
    assert rel_err(landmark_solve(k, x, num_iters=num_iters, solver="newton_eigh"), expected) < 1e-8


@pytest.mark.parametrize("scale", [1.0, 0.3, 0.1])
def test_newton_eigh_float32_at_least_as_accurate_as_newton(scale):
    # From float32 landmarks, 'newton_eigh' (float64 eigendecomposition) stays as close to the float64 Newton result as
    # float32 'newton' itself (measured: 1.8e-6 / 3.8e-6 / 1.1e-5 vs 1.7e-6 / 8.6e-6 / 4.9e-5).
    k = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * scale
    x = torch.randn(2, 64, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = landmark_inverse(k, num_iters=20) @ x
    out = landmark_solve(k.float(), x.float(), solver="newton_eigh")
    assert out.dtype == torch.float32
    newton_err = rel_err(landmark_inverse(k.float()) @ x.float(), ref)
    assert rel_err(out, ref) < max(1.5 * newton_err, 2e-6)


def test_newton_filter_closed_form():
    lam = torch.tensor([0.0, 1e-6, -1e-6, 0.01, 0.5, 1.0, -1.0, 2.0], dtype=torch.float64)
    alpha = torch.tensor(0.25, dtype=torch.float64)  # max_row_sum 2: alpha lam^2 <= 1
    for num_iters in (0, 3, 20):
        # scalar Newton-Schulz x <- 2x - x lam x from alpha lam, in float64
        x = alpha * lam
        for _ in range(num_iters):
            x = 2 * x - x * lam * x
        torch.testing.assert_close(newton_filter(lam, alpha, num_iters), x, rtol=1e-12, atol=0)
    f = newton_filter(lam, alpha, 20)
    assert f[0] == 0 and f[2] == -f[1] and f[6] == -f[5]  # odd, 0 at 0
    assert torch.allclose(f[4:6], 1 / lam[4:6], rtol=1e-12)  # resolved eigenvalues are inverted
    assert torch.allclose(f[1], 2.0 ** 20 * alpha * lam[1], rtol=1e-6)  # small ones damped, not inverted
    # per-matrix alpha broadcasts over the eigenvalues; non-finite input stays non-finite (as Newton), per matrix
    lam2 = torch.stack([lam[1:], torch.full_like(lam[1:], float("nan"))])
    f2 = newton_filter(lam2, torch.full((2, 1), 0.25, dtype=torch.float64), 20)
    assert torch.isfinite(f2[0]).all() and torch.isnan(f2[1]).all()


@pytest.mark.parametrize("scale, tol", [(1.0, 1e-5), (0.7, 2e-4), (0.3, 2e-2)])
def test_newton_thin_float32_tolerance(scale, tol):
    # fp32 rounding noise of the residual chain S_j grows 2x per step in the directions Newton has not resolved, so
    # newton_thin's fp32 error grows with the kernel's conditioning (fp32 'newton' stays ~1e-5): kernel eigenvalues
    # [0.30, 2.4] -> ~1e-6, [0.094, 6.3] -> ~6e-5, [0.0015, 35] -> ~8e-3 (measured, float64 Newton as reference).
    x = torch.randn(2, 64, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    k = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * scale
    ref = landmark_inverse(k, num_iters=20) @ x
    out = landmark_solve(k.float(), x.float(), solver="newton_thin")
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < tol
    assert rel_err(landmark_inverse(k.float()) @ x.float(), ref) < 2e-5


def test_cholesky_float32_tolerance():
    x = torch.randn(2, 64, 6, dtype=torch.float64)
    # cholesky (factorised in float64 whatever the input dtype) vs the float64 ridge solve
    k = _spread_landmarks(2, 64, 8, torch.float64)
    ref = landmark_solve(k, x, solver="cholesky")
    out = landmark_solve(k.float(), x.float(), solver="cholesky")
    assert out.dtype == torch.float32
    # The float32 landmark kernel itself (|k|^2 + |k|^2 - 2 k.k in float32) is what differs: over 200 random x the
    # error was 7.7e-6 (median) to 1.5e-5 (max).
    assert rel_err(out, ref) < 3e-5


@pytest.mark.parametrize("solver", ["cholesky", "newton_thin", "newton_eigh"])
def test_gradcheck_float64(solver):
    # cholesky: autograd through the ridge solve. The Newton solvers' closed-form backward is the gradient of the exact
    # inverse: exact once Newton has converged (30 steps on these well-separated landmarks).
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    k = (torch.randn(1, 2, 4, 3, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
    v = torch.randn(1, 2, 7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: soft_attention(q, k, v, num_iters=30, impl="reference", solver=solver), (q, k, v))


@pytest.mark.parametrize("solver", ["newton_thin", "newton_eigh"])
def test_gradients_equal_newton_unconverged(solver):
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 50, 8, generator=gen, dtype=torch.float64) * 0.5
    k = _clustered_landmarks(2, 16, 8, torch.float64)
    v = torch.randn(2, 50, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 50, 4, generator=gen, dtype=torch.float64)
    grads = {}
    for name in ("newton", solver):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        soft_attention(*leaves, impl="reference", solver=name).backward(g)
        grads[name] = [t.grad for t in leaves]
    for a, b in zip(grads[solver], grads["newton"]):
        assert rel_err(a, b) < 1e-9


@pytest.mark.parametrize("solver", SOLVERS)
def test_batch_independence(solver):
    k = torch.cat([_clustered_landmarks(1, 32, 8, torch.float32), _spread_landmarks(1, 32, 8, torch.float32) * 5])
    x = torch.randn(2, 32, 4)
    together = landmark_solve(k, x, solver=solver)
    for i in range(2):
        alone = landmark_solve(k[i:i + 1], x[i:i + 1], solver=solver)
        assert torch.allclose(together[i:i + 1], alone, rtol=1e-5, atol=1e-6 * alone.abs().max().item())


def test_cholesky_failure_is_per_matrix_and_finite():
    good = gaussian_kernel(*(2 * [_spread_landmarks(1, 8, 4, torch.float64)]))
    bad = -torch.eye(8, dtype=torch.float64)[None]  # not positive definite: the factorisation fails
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    out = ridge_cholesky_solve(torch.cat([good, bad]), x)
    assert torch.isfinite(out).all()
    assert rel_err(out[:1], torch.linalg.solve(good + CHOLESKY_EPS * torch.eye(8, dtype=torch.float64), x[:1])) < 1e-10


def test_bad_solver_values():
    q, k, v = torch.randn(1, 6, 4), torch.randn(1, 3, 4), torch.randn(1, 6, 4)
    with pytest.raises(ValueError, match="landmark solver must be 'auto' or one of"):
        soft_attention(q, k, v, solver="pinv")
    with pytest.raises(ValueError, match="landmark solver must be 'auto' or one of"):
        SOFT(arch="tiny", landmark_solver="Cholesky")


def test_auto_solver_is_newton_lowrank_on_the_cpu_newton_elsewhere(monkeypatch):
    """The backbone's default 'auto' resolves by the input's device (one rule: resolve_solver); on the CPU the
    attention layers of a default SOFT run 'newton_lowrank' and nothing else; soft_attention(solver='auto') gives
    what the resolved solver gives."""
    assert resolve_solver("auto", "cpu") == "newton_lowrank"
    assert resolve_solver("auto", "cuda") == "newton"
    assert all(resolve_solver(name, "cpu") == name for name in SOLVERS)
    calls = {name: 0 for name in SOLVERS}
    for name, entry in list(SOLVERS.items()):
        def counted(mat, x, num_iters, _name=name, _apply=entry.apply):
            calls[_name] += 1
            return _apply(mat, x, num_iters)

        monkeypatch.setitem(SOLVERS, name, LandmarkSolver(apply=counted))  # no dense inverse: every call counted
    net = SOFT(arch="tiny", out_indices=(0,))
    assert {m.landmark_solver for m in net.modules() if hasattr(m, "landmark_solver")} == {"auto"}
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 64))
    assert calls["newton_lowrank"] == 1 and sum(calls.values()) == 1  # stage 1 has one SOFT block
    q, k, v = torch.randn(2, 40, 8), torch.randn(2, 10, 8) * 0.5, torch.randn(2, 40, 8)
    assert torch.equal(soft_attention(q, k, v, impl="reference", solver="auto"),
                       soft_attention(q, k, v, impl="reference", solver="newton_lowrank"))


@pytest.mark.parametrize("solver", ["newton_thin", "newton_eigh", "cholesky"])
def test_traces_without_graph_breaks(solver):
    q, k, v = torch.randn(2, 32, 8), torch.randn(2, 8, 8) * 0.5, torch.randn(2, 32, 8)
    fn = torch.compile(lambda q, k, v: soft_attention(q, k, v, impl="reference", solver=solver), backend="eager",
                       fullgraph=True)
    assert torch.allclose(fn(q, k, v), soft_attention(q, k, v, impl="reference", solver=solver), atol=1e-6)


def test_backbone_solvers_close_to_newton():
    # 96x128 input: 12 (stage 1) / 12 (stage 2) / 12 (stage 3) landmarks, few enough that 20 Newton steps converge,
    # so every solver computes the kernel's inverse: fp32 rounding (newton_thin) and the 1e-6 ridge times the
    # kernel's condition number (cholesky) stay well below 1e-4 of the outputs' scale.
    torch.manual_seed(0)
    ref_model = SOFT(arch="tiny").eval()
    ref_model.init_weights()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = ref_model(x)
        for solver in ("newton_eigh", "newton_thin", "cholesky"):
            model = SOFT(arch="tiny", landmark_solver=solver).eval()
            model.load_state_dict(ref_model.state_dict())
            assert all(b.attn.landmark_solver == solver for s in model.stages[:3] for b in s.blocks)
            for a, b in zip(model(x), ref):
                assert rel_err(a, b) < 1e-4, solver
