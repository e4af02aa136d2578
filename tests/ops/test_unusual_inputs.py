"""Meta tensors, empty tensors and torch.jit.script through soft_attention, per solver and backend (issue 11.7).

Meta tensors propagate shapes and dtypes (forward and backward) through every backend: the reference is plain torch
(autocast is skipped for a device type without it), 'ext' runs the custom ops' fake kernels. ``torch.jit.script``
refuses with the alternative (torch.compile) instead of a TorchScript frontend error about f-strings.
"""
import pytest
import torch

from mmsoft.ops import ext_loader, soft_attention
from mmsoft.ops.landmark_solvers import SOLVERS

IMPLS = ["reference", "ext", "auto"]


def shapes_and_dtypes(device: str, solver: str, impl: str, dtype: torch.dtype = torch.float32):
    leaves = [torch.ones(shape, device=device, dtype=dtype, requires_grad=True)
              for shape in ((2, 3, 20, 8), (2, 3, 5, 8), (2, 3, 20, 6))]
    out = soft_attention(*leaves, solver=solver, impl=impl)
    out.sum().backward()
    return [(tuple(t.shape), t.dtype) for t in (out, *(leaf.grad for leaf in leaves))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_meta_tensors_propagate_shapes_forward_and_backward(solver, impl):
    got = shapes_and_dtypes("meta", solver, impl)
    want = shapes_and_dtypes("cpu", solver, "reference")
    assert got == want


@pytest.mark.parametrize("impl", IMPLS)
def test_meta_half_precision_output_dtype(impl):
    assert shapes_and_dtypes("meta", "newton", impl, torch.float16)[0] == ((2, 3, 20, 6), torch.float16)


def test_jit_script_says_to_use_torch_compile():
    with pytest.raises(RuntimeError, match="torch.jit.script.*Use torch.compile"):
        torch.jit.script(soft_attention)


EMPTY = {  # name: (q, k, v) shapes
    "batch 0": ((0, 2, 16, 8), (0, 2, 4, 8), (0, 2, 16, 8)),
    "N = 0": ((1, 2, 0, 8), (1, 2, 4, 8), (1, 2, 0, 8)),
    "N = 0, m = 1": ((2, 0, 8), (2, 1, 8), (2, 0, 5)),
}


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=pytest.mark.skipif(
    not ext_loader.ext_available("cpu"), reason="mmsoft._ext is not built"))])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("case", list(EMPTY))
def test_empty_tensors(case, solver, impl):
    """Nothing to attend: empty output; the landmarks' gradient is exactly zero (no token depends on them)."""
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(shape, generator=gen).requires_grad_() for shape in EMPTY[case]]
    out = soft_attention(*leaves, solver=solver, impl=impl)
    assert out.shape == EMPTY[case][0][:-1] + EMPTY[case][2][-1:]
    out.sum().backward()
    for leaf in leaves:
        assert leaf.grad.shape == leaf.shape
    assert torch.equal(leaves[1].grad, torch.zeros_like(leaves[1]))
