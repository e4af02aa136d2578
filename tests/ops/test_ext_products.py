"""The fused products as one autograd node (``mmsoft.ops.ext_products``): the same gradients as the two custom ops
with their own backward, from one gradient pass over the N x m kernel instead of two."""
import pytest
import torch
from utils import make_inputs, rel_err

from mmsoft.ops import custom_ops, ext_products, soft_attention
from mmsoft.ops.landmark_solvers import build_operator

pytestmark = pytest.mark.usefixtures("needs_cpu_ext")


def _make_operator(solver: str, mask=None):
    return lambda landmarks: build_operator(landmarks, True, 20, solver, mask)


def _grads(products, q, k, v, make_operator, grad):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = products(*leaves, make_operator)
    out.backward(grad)
    return out, [t.grad for t in leaves]


def _two_ops(q, k, v, make_operator):
    return ext_products._two_op_products(q, k, v, make_operator(k))


@pytest.mark.parametrize("solver", ["newton", "newton_eigh", "newton_lowrank", "cholesky"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_one_node_matches_the_two_ops(solver, dtype):
    q, k, v = make_inputs(2, 3, 90, 12, 16, c=8, dtype=dtype, seed=3)
    grad = torch.randn(2, 3, 90, 8, dtype=dtype, generator=torch.Generator().manual_seed(1))
    make_operator = _make_operator(solver)
    out, grads = _grads(ext_products.ext_products, q, k, v, make_operator, grad)
    assert type(out.grad_fn).__name__ == "SoftProductsFunctionBackward"
    ref_out, ref_grads = _grads(_two_ops, q, k, v, make_operator, grad)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert rel_err(out, ref_out) < tol
    for name, got, ref in zip("qkv", grads, ref_grads):
        assert got.dtype == dtype and got.shape == ref.shape, name
        assert rel_err(got, ref) < tol, name


def test_landmark_mask_and_partial_requires_grad():
    q, k, v = make_inputs(2, 2, 70, 10, 8, dtype=torch.float64, seed=4)
    mask = torch.tensor([[True] * 10, [True] * 6 + [False] * 4]).view(2, 1, 10)
    grad = torch.randn(2, 2, 70, 8, dtype=torch.float64)
    make_operator = _make_operator("newton", mask)
    _, grads = _grads(ext_products.ext_products, q, k, v, make_operator, grad)
    _, ref_grads = _grads(_two_ops, q, k, v, make_operator, grad)
    for got, ref in zip(grads, ref_grads):
        assert rel_err(got, ref) < 1e-12
    # Only v needs a gradient: k's branch through P is skipped, dv unchanged.
    v_leaf = v.clone().requires_grad_()
    ext_products.ext_products(q, k, v_leaf, make_operator).backward(grad)
    assert rel_err(v_leaf.grad, ref_grads[2]) < 1e-12


def test_one_gradient_pass(monkeypatch):
    """Backward runs ``A^T g`` (a forward kernel) and one backward kernel, not the two backward kernels."""
    calls = {"kernel_t_matmul": 0, "kernel_t_matmul_backward": 0, "kernel_matmul_backward": 0}
    for name in calls:
        original = getattr(custom_ops, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(custom_ops, name, counted)
    q, k, v = (t.requires_grad_() for t in make_inputs(1, 2, 50, 8, 8, seed=5))
    soft_attention(q, k, v, impl="ext").sum().backward()
    assert calls == {"kernel_t_matmul": 2, "kernel_t_matmul_backward": 1, "kernel_matmul_backward": 0}


def test_inference_uses_the_two_ops():
    q, k, v = (t.requires_grad_() for t in make_inputs(1, 2, 30, 6, 8, seed=6))
    with torch.no_grad():
        assert soft_attention(q, k, v, impl="ext").grad_fn is None
    q_plain, k_plain, v_plain = (t.detach() for t in (q, k, v))
    assert soft_attention(q_plain, k_plain, v_plain, impl="ext").grad_fn is None


def test_retain_graph_backward_twice():
    q, k, v = (t.requires_grad_() for t in make_inputs(1, 2, 40, 8, 8, dtype=torch.float64, seed=7))
    out = soft_attention(q, k, v, impl="ext")
    first = torch.autograd.grad(out.sum(), (q, k, v), retain_graph=True)
    second = torch.autograd.grad(out.sum(), (q, k, v))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_second_derivatives_raise_the_kernels_error():
    q, k, v = (t.requires_grad_() for t in make_inputs(1, 2, 40, 8, 8, dtype=torch.float64, seed=8))
    grads = torch.autograd.grad(soft_attention(q, k, v, impl="ext").sum(), (q, k, v), create_graph=True)
    with pytest.raises(RuntimeError, match=r"second derivatives.*impl='reference'"):
        torch.autograd.grad(grads[0].sum(), (q, k, v))


def test_two_ops_where_the_kernels_lack_twice_the_channels(monkeypatch):
    """The gradient pass of the one-node backward takes [v, g_out]: 2c channels. Where the kernels stop below that
    (CUDA: CUDA_MAX_CHANNELS), the two ops run instead."""
    from mmsoft.ops import ext_loader

    limit = 8
    original = ext_loader.ext_unsupported
    monkeypatch.setattr(ext_loader, "ext_unsupported", lambda device_type, dtypes=(), channels=0: (
        "too many channels" if channels > limit else original(device_type, dtypes, channels)))
    q, k, v = (t.requires_grad_() for t in make_inputs(1, 2, 30, 6, 8, seed=9))
    out = soft_attention(q, k, v, impl="ext")
    assert type(out.grad_fn).__name__ != "SoftProductsFunctionBackward"
    out.sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None


def test_operator_independent_of_the_landmarks():
    """Plain SOFT with a solver that ignores the kernel: P x = x does not depend on k, and training still works
    (k's gradient is then that of the products alone)."""
    q, k, v = make_inputs(1, 2, 40, 6, 8, dtype=torch.float64, seed=10)
    grad = torch.randn(1, 2, 40, 8, dtype=torch.float64)

    def identity_operator(landmarks):
        return lambda x: x

    _, grads = _grads(ext_products.ext_products, q, k, v, identity_operator, grad)
    _, ref_grads = _grads(_two_ops, q, k, v, identity_operator, grad)
    for got, ref in zip(grads, ref_grads):
        assert rel_err(got, ref) < 1e-12
