"""FLOP counting for the SOFT attention core, for mmengine's jit-trace ``FlopAnalyzer``.

mmengine (like fvcore) counts one multiply-add as one FLOP and only knows a fixed list of aten ops. A trace of a SOFT
model contains what it cannot see: the fused kernels ``mmsoft::kernel_t_matmul`` / ``mmsoft::kernel_matmul`` (custom
ops of the compiled extension), the Newton-Schulz pseudo-inverse (one opaque ``prim::PythonOp.NewtonPinv`` node: an
autograd Function, whose 20 iterations the tracer never records; likewise the Functions of the ``'newton_thin'``,
``'newton_eigh'`` and ``'newton_lowrank'`` solvers), ``aten::baddbmm`` and stage 4's
``aten::scaled_dot_product_attention``. Without these handles a SOFT model's FLOPs come out several times too low.
Handles are registered by the Functions and ops themselves (:func:`node_kind` derives the name the trace shows).

The count is the work the forward executes, per head (``N`` tokens, ``m`` landmarks, head dim ``d``, value dim
``c``), the same for the extension and the PyTorch reference:

* ``A = exp(-|q_i - k_j|^2 / 2)``: ``N m d``, computed twice (for ``A^T V`` and for ``A W``; both backends recompute
  it rather than keep an ``N x m`` matrix),
* ``A^T V`` and ``A W``: ``N m c`` each, ``P (A^T V)``: ``m^2 c``,
* the landmark kernel ``Ah``: ``m^2 d``, Newton-Schulz: ``2 m^3`` per iteration.

Elementwise work (``exp``, the SOFT-Norm scaling ``D^-1/2 P D^-1/2``) costs nothing, as everywhere in mmengine.
"""
from __future__ import annotations

from collections import Counter
from math import prod
from typing import Any, Callable

import torch

from . import custom_ops, landmark_solvers, newton_lowrank  # noqa: F401 (custom_ops registers torch.ops.mmsoft)

Handle = Callable[[list, list], "int | Counter[str]"]


def node_kind(target: Any) -> str:
    """The node kind under which a jit trace (mmengine's ``FlopAnalyzer``) shows ``target``: ``prim::PythonOp.<class
    name>`` for an autograd Function class, the qualified name (``aten::baddbmm``, ``mmsoft::kernel_matmul``) for an
    operator overload such as ``torch.ops.aten.baddbmm.default``. Raises ``TypeError`` for anything else."""
    if isinstance(target, type) and issubclass(target, torch.autograd.Function):
        return f"prim::PythonOp.{target.__name__}"
    if isinstance(target, torch._ops.OpOverload):
        return target.name()
    raise TypeError(f"expected an autograd Function class or an operator overload, got {target!r}")


def kernel_product_flops(n: int, m: int, d: int, c: int) -> int:
    """MACs of one ``A^T V`` or ``A W`` product including the Gaussian kernel ``A (n x m)`` it evaluates."""
    return n * m * (d + c)


def newton_pinv_flops(m: int, num_iters: int) -> int:
    """MACs of ``num_iters`` Newton-Schulz steps ``V <- 2V - V (Ah V)`` on an ``m x m`` matrix."""
    return 2 * num_iters * m ** 3


def newton_thin_flops(m: int, c: int, num_iters: int) -> int:
    """MACs of ``'newton_thin'`` on an ``m x c`` right-hand side: the residual chain ``S_0 = alpha Ah^2``,
    ``S_{j+1} = 2 S_j - S_j^2`` (``num_iters`` ``m x m`` GEMMs) and ``num_iters + 1`` products with the RHS."""
    return num_iters * m ** 3 + (num_iters + 1) * m * m * c if num_iters else m * m * c


def newton_eigh_flops(m: int, c: int) -> int:
    """MACs of ``'newton_eigh'`` on an ``m x c`` right-hand side: the symmetric eigendecomposition, counted as Golub &
    Van Loan's ``9 m^3`` flops (tridiagonal QR with vectors) = ``4.5 m^3`` multiply-adds whatever LAPACK's driver
    really does, plus ``U (f * (U^T x))``. Independent of the iteration count."""
    return 9 * m ** 3 // 2 + 2 * m * m * c


def newton_lowrank_flops(m: int, c: int, num_iters: int, rank: int, power_iters: int) -> int:
    """MACs of ``'newton_lowrank'`` on an ``m x c`` right-hand side where the rank ``s = min(rank, m)`` is certified:
    ``power_iters + 2`` products ``Ah Q`` (``m^2 s``) and Householder QRs with their ``Q`` (``2 m s^2``), ``T``, the
    residual ``R`` and ``R (W - c I)`` (``3 m s^2``), the series (``2 num_iters + 2`` products of ``s x s``), then
    ``P x`` (``Ah x``: ``m^2 c``, the thin products ``7 m s c + 3 s^2 c``). A matrix that fails the certificate also
    costs an eigendecomposition, which a trace does not show (see :func:`newton_eigh_flops`)."""
    s = min(rank, m)
    return ((power_iters + 2) * (m * m * s + 2 * m * s * s) + 3 * m * s * s + (2 * num_iters + 2) * s ** 3
            + m * m * c + 7 * m * s * c + 3 * s * s * c)


def soft_attention_flops(n: int, m: int, d: int, c: int | None = None, num_iters: int = 20,
                         batch_heads: int = 1) -> int:
    """MACs of ``mmsoft.ops.soft_attention`` for ``batch_heads`` heads of ``n`` tokens, ``m`` landmarks, head dim ``d``
    and value dim ``c`` (default ``d``); the same for SOFT and SOFT-Norm (the normalisation is elementwise)."""
    c = d if c is None else c
    per_head = (2 * kernel_product_flops(n, m, d, c)  # A^T V and A W, each evaluating A
                + m * m * d                           # landmark kernel Ah
                + newton_pinv_flops(m, num_iters)     # pinv(Ah)
                + m * m * c)                          # P (A^T V)
    return batch_heads * per_head


def _shape(value: Any) -> list[int]:
    shape = value.type().sizes() if value.isCompleteTensor() else None
    if shape is None:
        raise ValueError(f"FLOP counting needs complete tensor shapes in the trace, got {value}")
    return list(shape)


def _kernel_product_handle(inputs: list, outputs: list) -> Counter[str]:
    # mmsoft::kernel_t_matmul(q (B, N, d), k (B, m, d), v (B, N, c)) and mmsoft::kernel_matmul(q, k, w (B, m, c))
    q, k, x = (_shape(v) for v in inputs[:3])
    return Counter(soft_attention=prod(q[:-2]) * kernel_product_flops(q[-2], k[-2], q[-1], x[-1]))


def _iterations(num_iters: int | None, outputs: list) -> int:
    """``num_iters`` when given, else the Function's non-tensor argument recorded on the traced node."""
    return int(outputs[0].node().scalar_args()[0]) if num_iters is None else num_iters


def _newton_pinv_handle(num_iters: int | None) -> Handle:
    def handle(inputs: list, outputs: list) -> Counter[str]:
        shape = _shape(inputs[0])  # (..., m, m)
        return Counter(newton_pinv=prod(shape[:-2]) * newton_pinv_flops(shape[-1], _iterations(num_iters, outputs)))
    return handle


def _newton_thin_handle(num_iters: int | None) -> Handle:
    def handle(inputs: list, outputs: list) -> Counter[str]:
        mat, rhs = _shape(inputs[0]), _shape(inputs[1])  # (..., m, m), (..., m, c)
        iters = _iterations(num_iters, outputs)
        return Counter(newton_thin=prod(mat[:-2]) * newton_thin_flops(mat[-1], rhs[-1], iters))
    return handle


def _newton_eigh_handle(inputs: list, outputs: list) -> Counter[str]:
    mat, rhs = _shape(inputs[0]), _shape(inputs[1])
    return Counter(newton_eigh=prod(mat[:-2]) * newton_eigh_flops(mat[-1], rhs[-1]))


def _newton_lowrank_handle(num_iters: int | None) -> Handle:
    def handle(inputs: list, outputs: list) -> Counter[str]:
        mat, rhs = _shape(inputs[0]), _shape(inputs[1])
        flops = newton_lowrank_flops(mat[-1], rhs[-1], _iterations(num_iters, outputs), newton_lowrank.LOWRANK_RANK,
                                     newton_lowrank.LOWRANK_POWER_ITERS)
        return Counter(newton_lowrank=prod(mat[:-2]) * flops)
    return handle


def _cholesky_handle(inputs: list, outputs: list) -> Counter[str]:
    # linalg_cholesky_ex(A (..., m, m)): m^3 / 3 flops = m^3 / 6 multiply-adds
    mat = _shape(inputs[0])
    return Counter(cholesky=prod(mat[:-2]) * mat[-1] ** 3 // 6)


def _cholesky_solve_handle(inputs: list, outputs: list) -> Counter[str]:
    # cholesky_solve(B (..., m, c), L (..., m, m)): two triangular solves of m^2 c / 2 multiply-adds each
    rhs = _shape(inputs[0])
    return Counter(cholesky=prod(rhs[:-2]) * rhs[-2] ** 2 * rhs[-1])


def _baddbmm_handle(inputs: list, outputs: list) -> int:
    # baddbmm(input, batch1 (B, n, k), batch2 (B, k, p)): the batched product; the scaled add is elementwise
    b1, b2 = _shape(inputs[1]), _shape(inputs[2])
    return prod(b1) * b2[-1]


def _sdpa_handle(inputs: list, outputs: list) -> int:
    # scaled_dot_product_attention(q (..., L, E), k (..., S, E), v (..., S, Ev)): q k^T and attn v
    q, k, v = (_shape(x) for x in inputs[:3])
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def soft_flop_handles(newton_iters: int | None = None) -> dict[str, Handle]:
    """Op handles for ``FlopAnalyzer.set_op_handle(**soft_flop_handles())`` that make SOFT models count correctly.

    ``newton_iters`` overrides the iteration count recorded in the trace: ``tools/analysis/get_flops.py`` traces with
    0 iterations (fast) and counts the model's configured number.
    """
    handles: dict[Any, Handle] = {
        torch.ops.mmsoft.kernel_t_matmul.default: _kernel_product_handle,
        torch.ops.mmsoft.kernel_matmul.default: _kernel_product_handle,
        landmark_solvers.NewtonPinv: _newton_pinv_handle(newton_iters),
        landmark_solvers.NewtonThinApply: _newton_thin_handle(newton_iters),
        landmark_solvers.NewtonEighApply: _newton_eigh_handle,
        newton_lowrank.NewtonLowrankApply: _newton_lowrank_handle(newton_iters),
        torch.ops.aten.linalg_cholesky_ex.default: _cholesky_handle,
        torch.ops.aten.cholesky_solve.default: _cholesky_solve_handle,
        torch.ops.aten.baddbmm.default: _baddbmm_handle,
        torch.ops.aten.scaled_dot_product_attention.default: _sdpa_handle,
    }
    return {node_kind(target): handle for target, handle in handles.items()}
