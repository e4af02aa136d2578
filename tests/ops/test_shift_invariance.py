"""Queries and landmarks sharing a large offset (issue 11.4).

``exp(-|q_i - k_j|^2 / 2)`` does not change when q and k move together, but its expansion ``|q|^2 + |k|^2 - 2 q.k``
loses ``eps |q|^2`` to cancellation: in fp32 the attention was 4e-3 off at an offset of 100 and 49 % off for
landmarks equal to the queries at 1e3. The reference, the CPU kernels and the CUDA kernels (their emulation,
tests/ops/test_cuda_emulation.py) centre q and k on the landmarks' mean first. Inputs here lie on a binary grid
coarse enough that q + c is exact in fp32: the comparison measures the formulation, not the rounding of the inputs.
"""
import pytest
import torch
from utils import TOLERANCES, make_inputs, rel_err

from mmsoft.ops import ext_loader, soft_attention
from mmsoft.ops.landmark_solvers import SOLVERS
from mmsoft.ops.reference import gaussian_kernel

IMPLS = [
    "reference",
    pytest.param("ext", marks=pytest.mark.skipif(not ext_loader.ext_available("cpu"), reason="mmsoft._ext not built")),
]


def on_grid(t: torch.Tensor, bits: int = 10) -> torch.Tensor:
    """``t`` rounded to multiples of 2^-bits: for |t| < 8 and offsets up to 1e3, ``t + offset`` is exact in fp32."""
    return torch.round(t * 2.0 ** bits) / 2.0 ** bits


def grid_inputs(n: int = 48):
    """The shared float64 inputs (2 images, 2 heads, 12 landmarks, d = 8) with q and k on the grid."""
    q, k, v = make_inputs(2, 2, n, 12, 8, dtype=torch.float64)
    return on_grid(q), on_grid(k), v


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("offset", [10.0, 100.0])
def test_shared_offset_fp32_matches_float64_unshifted(solver, impl, offset):
    q, k, v = grid_inputs()
    exact = soft_attention(q, k, v, solver=solver, impl="reference")
    out = soft_attention((q + offset).float(), (k + offset).float(), v.float(), solver=solver, impl=impl)
    assert rel_err(out, exact) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_landmarks_equal_to_queries_at_offset_1e3(impl):
    q, _, v = grid_inputs(n=16)
    exact = soft_attention(q, q, v, impl="reference")
    shifted = (q + 1e3).float()
    assert rel_err(soft_attention(shifted, shifted, v.float(), impl=impl), exact) < 1e-5


def test_gaussian_kernel_shift_invariant():
    q, k, _ = grid_inputs()
    exact = gaussian_kernel(q, k)
    for offset in (100.0, 1e3):
        got = gaussian_kernel((q + offset).float(), (k + offset).float())
        assert (got.double() - exact).abs().max() < 2e-6, offset
    # The landmark kernel Ah = gaussian_kernel(k, k), as landmark_solvers forms it, far from the origin.
    ah = gaussian_kernel((k + 1e3).float(), (k + 1e3).float())
    assert (ah.double() - gaussian_kernel(k, k)).abs().max() < 2e-6


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_shared_offset_fp32_gradients_match_float64_unshifted(solver, impl):
    q, k, v = grid_inputs()
    grad = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    leaves64 = [t.clone().requires_grad_() for t in (q, k, v)]
    soft_attention(*leaves64, solver=solver, impl="reference").backward(grad)
    leaves32 = [(t + c).float().requires_grad_() for t, c in ((q, 100.0), (k, 100.0), (v, 0.0))]
    soft_attention(*leaves32, solver=solver, impl=impl).backward(grad.float())
    for got, want, name in zip(leaves32, leaves64, "qkv"):
        assert rel_err(got.grad, want.grad) < 1e-4, name


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_at_an_offset_float64(impl):
    """The centre is detached (the function does not depend on it): first derivatives stay exact."""
    gen = torch.Generator().manual_seed(2)
    q = (torch.randn(1, 2, 7, 4, generator=gen, dtype=torch.float64) * 0.5 + 30).requires_grad_()
    k = (torch.randn(1, 2, 3, 4, generator=gen, dtype=torch.float64) * 1.5 + 30).requires_grad_()
    v = torch.randn(1, 2, 7, 3, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda q, k, v: soft_attention(q, k, v, num_iters=60, impl=impl), (q, k, v),
                                    eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_half_precision_at_an_offset(impl, dtype):
    """fp16 / bf16 q and v (autocast) with fp32 landmarks: the centring happens in fp32, after q is widened, so
    the error against float64 of the same (rounded) inputs stays that of the dtype, offset or not."""
    q, k, v = grid_inputs()
    q16, k32, v16 = (q + 10).to(dtype), (k + 10).float(), v.to(dtype)
    exact = soft_attention(q16.double(), k32.double(), v16.double(), impl="reference")
    assert rel_err(soft_attention(q16, k32, v16, impl=impl), exact) < TOLERANCES[dtype]
