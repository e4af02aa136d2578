"""The N-sized products of the SOFT attention on the fused kernels of ``mmsoft._ext``: ``A . (P . (A^T v))``.

Forward is two passes over the ``N x m`` kernel ``A`` (recomputed tile by tile, never stored): ``A^T v``, then
``A w`` for ``w = P (A^T v)``. Backward through the two ops separately takes two more passes, each with the full
gradient work of its op (build the tile, ``G = A o (x y^T)``, ``dq = G k - rowsum(G) q``, ``dk = G^T q - colsum(G) k``
and a third product): ten ``c``-wide GEMMs over ``A`` and two elementwise products. :class:`SoftProductsFunction`
evaluates the whole product as one autograd node instead, so that backward needs

1. ``dw = A^T g_out`` (the forward kernel ``A^T v``: two GEMMs), then ``g = dL/d(A^T v)`` and the landmarks'
   gradient through ``P`` by autograd on ``P`` alone (``m``-sized work);
2. one pass for everything else: both gradient terms share ``A``, so
   ``G = A o (v g^T + g_out w^T) = A o ([v, g_out] [g, w]^T)`` gives ``dq`` and ``dk`` with one pair of GEMMs, and
   its third product is ``dv = A g``, the first ``c`` columns of ``A [g, w]`` (``dv_cols``: the CPU kernels skip
   the GEMM of the other ``c``, ``A w``, the forward output; the CUDA kernels compute and drop them).

The same gradients (sums in another order) from eight ``c``-wide GEMM equivalents on the CPU (nine on CUDA) and one
elementwise product. Measured on one CPU thread: SOFT-T backbone forward + backward at 800x1344 without the solve
10.71 -> 10.20 s (Intel, with the dropped columns still computed); ``dv_cols`` then takes a stage-1 gradient pass
(2 heads, N = 67,200, m = 1,050) from 0.75 to 0.65 s (AMD EPYC). The plain two-op path
(each op with its own backward, :mod:`mmsoft.ops.custom_ops`) remains for inference, under ``torch.compile`` (its
tracer cannot run autograd inside a Function's backward) and ``torch.jit.trace``, and where the kernels do not take
``2c`` channels (see :func:`ext_products`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from . import custom_ops, ext_loader
from .landmark_solvers import Operator
from .precision import acc_dtype

#: ``make_operator(k) -> (x -> P x)``: builds the landmark operator from landmarks ``k (..., m, d)``, differentiably.
OperatorBuilder = Callable[[Tensor], Operator]


def _operand_dtypes(q: Tensor, k: Tensor, v: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """``(T, acc(T))``: N-sized operands run in one input dtype ``T``, landmark-sized ones in ``acc(T)``."""
    if torch.float64 in (q.dtype, k.dtype, v.dtype):
        dtype = torch.float64
    else:
        dtype = torch.promote_types(q.dtype, v.dtype)
    return dtype, acc_dtype(dtype)


def _flat(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``q``, ``k``, ``v`` as the 3-D operands of the fused kernels (batch = product of the leading dims)."""
    dtype, acc = _operand_dtypes(q, k, v)
    batch = math.prod(q.shape[:-2])
    return (q.to(dtype).reshape(batch, *q.shape[-2:]), k.to(acc).reshape(batch, *k.shape[-2:]),
            v.to(dtype).reshape(batch, *v.shape[-2:]))


def _two_op_products(q: Tensor, k: Tensor, v: Tensor, apply_p: Operator) -> Tensor:
    lead, n, m, c = q.shape[:-2], q.shape[-2], k.shape[-2], v.shape[-1]
    q3, k3, v3 = _flat(q, k, v)
    context = apply_p(custom_ops.kernel_t_matmul(q3, k3, v3).view(*lead, m, c)).to(k3.dtype).reshape(k3.shape[0], m, c)
    return custom_ops.kernel_matmul(q3, k3, context).reshape(*lead, n, c)


class SoftProductsFunction(torch.autograd.Function):
    """``A . (P . (A^T v))`` as one autograd node (see the module docstring). ``P`` is built inside from ``k``
    detached (an alias of its storage, a fresh autograd leaf) by ``make_operator``, under autograd, and
    differentiated with ``torch.autograd.grad`` in backward, so every landmark solver keeps its own backward.
    Output ``(..., N, c)`` in the input dtype ``T``.

    Second derivatives: first-order gradients with ``create_graph=True`` work; differentiating them raises the
    fused kernels' "not implemented" error, as the two-op path does."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, make_operator: OperatorBuilder) -> Tensor:  # type: ignore[override]
        lead, n, m, c = q.shape[:-2], q.shape[-2], k.shape[-2], v.shape[-1]
        q3, k3, v3 = _flat(q, k, v)
        context = custom_ops.kernel_t_matmul(q3, k3, v3).view(*lead, m, c)
        with torch.enable_grad():
            k_leaf = k.detach().requires_grad_(ctx.needs_input_grad[1])
            context_leaf = context.detach().requires_grad_()
            w = make_operator(k_leaf)(context_leaf)
        w3 = w.detach().to(k3.dtype).reshape(k3.shape[0], m, c)
        ctx.save_for_backward(q, k, v, w3)
        ctx.landmark_graph = (w, k_leaf, context_leaf)
        return custom_ops.kernel_matmul(q3, k3, w3).reshape(*lead, n, c)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q, k, v, w3 = ctx.saved_tensors
        w, k_leaf, context_leaf = ctx.landmark_graph
        lead, n, c = q.shape[:-2], q.shape[-2], v.shape[-1]
        q3, k3, v3 = _flat(q, k, v)
        g_out3 = grad_out.to(q3.dtype).reshape(q3.shape[0], n, c)
        dw = custom_ops.kernel_t_matmul(q3, k3, g_out3)                                    # A^T g_out
        create_graph = torch.is_grad_enabled()
        wrt = (context_leaf, k_leaf) if k_leaf.requires_grad else (context_leaf,)
        # retain_graph: a caller's retain_graph=True may run this backward again.
        # allow_unused: an operator whose P does not depend on k (plain SOFT with a solver that ignores the kernel)
        grads = torch.autograd.grad(w, wrt, dw.view_as(w).to(w.dtype), retain_graph=True, create_graph=create_graph,
                                    allow_unused=True)
        g = grads[0] if grads[0] is not None else torch.zeros_like(context_leaf)
        g3 = g.to(k3.dtype).reshape_as(w3)
        # dv = A g: the first c columns of the third product A [g, w] (A w, the forward output, is not computed).
        dq3, dk3, dv3 = custom_ops.kernel_t_matmul_backward(
            q3, k3, torch.cat([v3, g_out3], -1), torch.cat([g3, w3], -1), c)
        dq = dq3.reshape(q.shape).to(q.dtype)
        dk = dk3.reshape(k.shape)
        if len(grads) > 1 and grads[1] is not None:
            dk = dk + grads[1]
        dv = dv3.reshape(*lead, n, c).to(v.dtype)
        return dq, dk.to(k.dtype), dv, None


def ext_products(q: Tensor, k: Tensor, v: Tensor, make_operator: OperatorBuilder) -> Tensor:
    """``A . (P . (A^T v))`` on the fused kernels, ``(..., N, c)`` in the input dtype ``T`` (float64 if any operand
    is, else the promotion of ``q`` and ``v``). ``make_operator`` builds ``x -> P x`` from the landmarks.

    With gradients needed (eager) one :class:`SoftProductsFunction` node, whose gradient pass takes ``2c`` value
    channels; else, under ``torch.compile`` or ``torch.jit.trace`` (FLOP counting, export: they see the custom ops,
    not an opaque Python node), and where the kernels do not take ``2c`` channels (CUDA, ``c`` above half
    :data:`mmsoft.ops.ext_loader.CUDA_MAX_CHANNELS`), the two custom ops."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if (needs_grad and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and ext_loader.ext_unsupported(q.device.type, (), 2 * v.shape[-1]) is None):
        return SoftProductsFunction.apply(q, k, v, make_operator)
    return _two_op_products(q, k, v, make_operator(k))
