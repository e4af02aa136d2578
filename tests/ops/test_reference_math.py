"""The attention core (reference backend) against a dense, textbook float64 formula."""
import pytest
import torch
from utils import make_inputs

from mmsoft.ops import gaussian_kernel, landmark_inverse, newton_pinv, soft_attention


def dense_gaussian(x, y):
    return torch.exp(-0.5 * ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1))


def dense_soft(q, k, v, sym_norm):
    a, ah = dense_gaussian(q, k), dense_gaussian(k, k)
    p = torch.linalg.inv(ah)
    if sym_norm:
        d = ah.sum(-1).rsqrt()
        p = d[..., :, None] * p * d[..., None, :]
    return a @ p @ a.transpose(-1, -2) @ v


#: The shared inputs with queries and landmarks close together: a landmark kernel far from the identity (condition
#: ~10), in float64.
CLOSE = dict(dtype=torch.float64, q_scale=0.3, k_scale=0.3)


def test_gaussian_kernel_matches_dense():
    q, k, _ = make_inputs(2, 3, 50, 7, 16, 5, **CLOSE)
    torch.testing.assert_close(gaussian_kernel(q, k), dense_gaussian(q, k), rtol=0, atol=1e-13)
    # equal rows: distance rounding must not give values above 1
    assert gaussian_kernel(k, k).max() <= 1.0


@pytest.mark.parametrize("sym_norm", [True, False])
def test_soft_attention_matches_dense_formula(sym_norm):
    q, k, v = make_inputs(2, 3, 50, 7, 16, 5, **CLOSE)
    ah = dense_gaussian(k, k)
    assert torch.linalg.cond(ah).max() > 3, "test inputs should not be trivially conditioned"
    out = soft_attention(q, k, v, sym_norm=sym_norm, num_iters=30)
    torch.testing.assert_close(out, dense_soft(q, k, v, sym_norm), rtol=1e-9, atol=1e-12)


def test_newton_pinv_converges_to_inverse_and_is_per_matrix():
    _, k, _ = make_inputs(3, 1, 50, 9, 16, 5, **CLOSE)
    ah = dense_gaussian(k, k)
    inv = newton_pinv(ah, 30)
    torch.testing.assert_close(inv, torch.linalg.inv(ah), rtol=1e-8, atol=1e-8)
    # scaling one matrix of the batch must not change the result of the others
    scaled = ah.clone()
    scaled[0] *= 50.0
    torch.testing.assert_close(newton_pinv(scaled, 30)[1:], inv[1:], rtol=0, atol=0)


def test_newton_pinv_singular_input_is_finite_pseudo_inverse():
    k = torch.zeros(1, 4, 8, dtype=torch.float64)  # four identical landmarks: rank-1 all-ones kernel
    ah = dense_gaussian(k, k)
    inv = newton_pinv(ah, 20)
    assert torch.isfinite(inv).all()
    torch.testing.assert_close(inv, torch.linalg.pinv(ah), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sym_norm", [True, False])
def test_gradcheck_float64(sym_norm):
    q, k, v = make_inputs(1, 2, 9, 3, 4, 2, **CLOSE)
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: soft_attention(a, b, c, sym_norm=sym_norm, num_iters=40), inputs)


def test_pinv_backward_is_closed_form_not_unrolled():
    _, k, _ = make_inputs(1, 1, 50, 6, 16, 5, **CLOSE)
    ah = dense_gaussian(k, k).requires_grad_()
    out = newton_pinv(ah, 20)
    # one saved tensor node, no chain of 20 matmul nodes
    assert out.grad_fn is not None and "NewtonPinv" in type(out.grad_fn).__name__
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, ah, g)
    p = torch.linalg.inv(ah.detach())
    pt = p.transpose(-1, -2)
    torch.testing.assert_close(grad, -pt @ g @ pt, rtol=1e-8, atol=1e-10)


def test_landmark_math_runs_in_fp32_under_autocast():
    q, k, v = make_inputs(2, 3, 50, 7, 16, 5, **{**CLOSE, "dtype": torch.float32})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inv = landmark_inverse(k.bfloat16())
        out = soft_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert inv.dtype == torch.float32
    assert out.dtype == torch.bfloat16
    ref = soft_attention(q, k, v)
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("shapes,err", [
    (((2, 5, 4), (2, 3, 8), (2, 5, 4)), "channel dim"),
    (((2, 5, 4), (2, 3, 4), (2, 6, 4)), "same number of tokens"),
    (((2, 5, 4), (3, 3, 4), (2, 5, 4)), "batch dims"),
    (((2, 5, 4), (2, 0, 4), (2, 5, 4)), "at least one landmark"),
])
def test_bad_shapes_raise_clear_errors(shapes, err):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=err):
        soft_attention(q, k, v)


def test_bad_dtype_and_impl_raise():
    q = torch.randint(0, 3, (1, 4, 2))
    with pytest.raises(TypeError, match="floating"):
        soft_attention(q, q[:, :2], q)
    x = torch.randn(1, 4, 2)
    with pytest.raises(ValueError, match="impl"):
        soft_attention(x, x[:, :2], x, impl="fast")
    with pytest.raises(ValueError, match="square"):
        newton_pinv(torch.randn(3, 4))
