"""``torch.library`` custom ops around the fused kernels of ``mmsoft._ext``.

``mmsoft::kernel_t_matmul(q, k, v) = A^T v`` and ``mmsoft::kernel_matmul(q, k, w) = A w`` with
``A = exp(-|q_i - k_j|^2 / 2)``, plus their backward ops. Each has a fake (meta) implementation, so
``torch.compile`` traces them as single nodes without graph breaks, and autograd registered with
``register_autograd`` (A is recomputed in backward, never saved). Double backward is not implemented: the backward
ops raise saying so when differentiated.

Operand convention (checked in C++): 3-D, ``q (B, N, d)`` and N-sized ``v`` / ``grad`` of an input dtype T
(float16 / bfloat16 / float32 / float64), landmark-sized ``k (B, m, d)`` and ``w (B, m, c)`` in the accumulation
dtype ``acc(T)`` (:func:`mmsoft.ops.precision.acc_dtype`: float32, float64 for T = float64). ``A^T v`` is returned in
acc(T), ``A w`` in T.
Non-contiguous operands are made contiguous here; use :func:`mmsoft.ops.soft_attention` for the user-facing API.
"""
import torch
from torch import Tensor

from .ext_loader import get_ext
from .precision import acc_dtype


def _c(t: Tensor) -> Tensor:
    return t.contiguous()


@torch.library.custom_op("mmsoft::kernel_t_matmul", mutates_args=())
def kernel_t_matmul(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``A^T v``: ``(B, m, c)`` in acc(T)."""
    return get_ext(q.device.type).kernel_t_matmul_forward(_c(q), _c(k), _c(v))


@torch.library.custom_op("mmsoft::kernel_matmul", mutates_args=())
def kernel_matmul(q: Tensor, k: Tensor, w: Tensor) -> Tensor:
    """``A w``: ``(B, N, c)`` in q's dtype."""
    return get_ext(q.device.type).kernel_matmul_forward(_c(q), _c(k), _c(w))


@torch.library.custom_op("mmsoft::kernel_t_matmul_backward", mutates_args=())
def kernel_t_matmul_backward(q: Tensor, k: Tensor, v: Tensor, grad: Tensor,
                             dv_cols: int = -1) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of ``A^T v`` for the output gradient ``grad (B, m, c)``; ``dv_cols`` in ``[1, c]``: only
    ``dv[..., :dv_cols]`` (``(B, N, dv_cols)``, the CPU kernels skip the other columns' GEMM), ``-1``: all."""
    return tuple(get_ext(q.device.type).kernel_t_matmul_backward(_c(q), _c(k), _c(v), _c(grad), dv_cols))


@torch.library.custom_op("mmsoft::kernel_matmul_backward", mutates_args=())
def kernel_matmul_backward(q: Tensor, k: Tensor, w: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dw)`` of ``A w`` for the output gradient ``grad (B, N, c)``."""
    return tuple(get_ext(q.device.type).kernel_matmul_backward(_c(q), _c(k), _c(w), _c(grad)))


@kernel_t_matmul.register_fake
def _(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return q.new_empty((q.shape[0], k.shape[1], v.shape[2]), dtype=acc_dtype(q.dtype))


@kernel_matmul.register_fake
def _(q: Tensor, k: Tensor, w: Tensor) -> Tensor:
    return q.new_empty((q.shape[0], q.shape[1], w.shape[2]))


# Gradients come back contiguous, in the dtype of the operand they belong to.
@kernel_t_matmul_backward.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, grad: Tensor, dv_cols: int = -1) -> tuple[Tensor, Tensor, Tensor]:
    dv_shape = v.shape if dv_cols == -1 else (*v.shape[:-1], dv_cols)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(dv_shape)


@kernel_matmul_backward.register_fake
def _(q: Tensor, k: Tensor, w: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), w.new_empty(w.shape)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _t_matmul_backward(ctx, grad: Tensor):
    q, k, v = ctx.saved_tensors
    return kernel_t_matmul_backward(q, k, v, grad)


def _matmul_backward(ctx, grad: Tensor):
    q, k, w = ctx.saved_tensors
    return kernel_matmul_backward(q, k, w, grad)


def _no_context(ctx, inputs, output) -> None:
    pass


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "mmsoft soft_attention(impl='ext'): second derivatives (double backward, e.g. torch.autograd.grad(..., "
        "create_graph=True) for a gradient penalty) are not implemented in the fused kernels; run "
        "soft_attention(..., impl='reference') for them")


kernel_t_matmul.register_autograd(_t_matmul_backward, setup_context=_setup_context)
kernel_matmul.register_autograd(_matmul_backward, setup_context=_setup_context)
# Backpropagating through the backward ops (create_graph=True) would otherwise stop at torch.library's generic
# "no autograd formula was registered" error, which reads like a packaging fault.
kernel_t_matmul_backward.register_autograd(_no_double_backward, setup_context=_no_context)
kernel_matmul_backward.register_autograd(_no_double_backward, setup_context=_no_context)
