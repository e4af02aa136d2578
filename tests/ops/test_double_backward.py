"""Second derivatives (double backward) of soft_attention, per solver and backend (issue 11.6).

The Newton-type solvers define their gradient as that of an exact inverse applied with ``P`` (closed form, see
:mod:`mmsoft.ops.landmark_solvers`); their second derivatives must be the derivative of that same closed form. They
used to differ silently: ``newton_eigh`` treated its saved eigenvectors as constants (second derivative w.r.t. k 25 %
off), ``newton_thin`` differentiated its unrolled residual iterations. The fused kernels (``impl='ext'``) have no
second derivatives and must say so.
"""
import pytest
import torch
from utils import make_inputs

from mmsoft.ops import ext_loader, soft_attention
from mmsoft.ops.landmark_solvers import SOLVERS

needs_ext = pytest.mark.skipif(not ext_loader.ext_available("cpu"), reason="mmsoft._ext is not built")


def small_inputs(spread: float, m: int = 4, seed: int = 0):
    """Float64 leaves q (2, 7, 4), k (2, m, 4) (landmarks ``spread`` apart) and v (2, 7, 3)."""
    inputs = make_inputs(2, None, 7, m, 4, 3, dtype=torch.float64, seed=seed, q_scale=0.5, k_scale=spread)
    return tuple(t.requires_grad_() for t in inputs)


@pytest.mark.parametrize("solver", SOLVERS)
def test_gradgradcheck_reference_float64(solver):
    """Well separated landmarks and 60 steps: Newton has converged, so the closed forms are the exact derivatives."""
    q, k, v = small_inputs(spread=2.0)
    assert torch.autograd.gradgradcheck(
        lambda q, k, v: soft_attention(q, k, v, num_iters=60, impl="reference", solver=solver), (q, k, v),
        eps=1e-6, atol=1e-5)


def second_derivatives(solver: str):
    """d/d(q, k, v) of <grad_k L, w> for L = <soft_attention(...), g>: the mixed second derivative through k."""
    # 10 clustered landmarks: smallest eigenvalue 6e-3 of the largest, |P Ah - I| = 0.73 after 20 steps.
    q, k, v = small_inputs(spread=0.3, m=10, seed=1)
    gen = torch.Generator().manual_seed(3)
    out = soft_attention(q, k, v, num_iters=20, impl="reference", solver=solver)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (dk,) = torch.autograd.grad(out, k, g, create_graph=True)
    w = torch.randn(dk.shape, generator=gen, dtype=torch.float64)
    return torch.autograd.grad(dk, (q, k, v), w)


@pytest.mark.parametrize("solver", ["newton_eigh", "newton_thin"])
def test_second_derivatives_equal_newton_unconverged(solver):
    """Same function, same closed-form gradient, hence the same second derivatives also where Newton has not converged
    (through k they used to be 71 % (newton_eigh) and 26 % (newton_thin) off here; now ~1e-14 / 6e-13)."""
    for got, want, name in zip(second_derivatives(solver), second_derivatives("newton"), "qkv"):
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err < 1e-8, (name, err)


@needs_ext
@pytest.mark.parametrize("solver", SOLVERS)
def test_ext_double_backward_raises_clearly(solver):
    q, k, v = small_inputs(spread=2.0)
    out = soft_attention(q, k, v, impl="ext", solver=solver)
    grads = torch.autograd.grad(out.sum(), (q, k, v), create_graph=True)  # first order with a graph is fine
    with pytest.raises(RuntimeError, match=r"second derivatives.*impl='reference'"):
        sum(g.square().sum() for g in grads).backward()


@needs_ext
def test_ext_first_derivatives_unaffected():
    q, k, v = small_inputs(spread=2.0)
    assert torch.autograd.gradcheck(lambda q, k, v: soft_attention(q, k, v, num_iters=60, impl="ext"), (q, k, v),
                                    eps=1e-6, atol=1e-6)
