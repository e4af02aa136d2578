"""Pure-PyTorch reference of the SOFT attention core.

Every function here is the ground truth that the compiled kernels (``mmsoft._ext``) are tested
against. Shapes follow ``(..., rows, channels)``: queries ``q (..., N, d)``, landmarks
``k (..., m, d)``, values ``v (..., N, c)``. All functions accept any leading batch dims.
"""
from __future__ import annotations

import torch
from torch import Tensor


def gaussian_kernel(x: Tensor, y: Tensor) -> Tensor:
    """Return ``exp(-||x_i - y_j||^2 / 2)`` for every row pair, shape ``(..., N, m)``.

    The squared distance is expanded as ``|x|^2 + |y|^2 - 2 x.y`` (one GEMM) and clamped at 0,
    which rounding can otherwise push slightly negative for (near-)equal rows.
    """
    sq = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2) - 2.0 * (x @ y.transpose(-1, -2))
    return torch.exp(-0.5 * sq.clamp_min(0.0))


def kernel_t_matmul(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``A^T v`` with ``A = gaussian_kernel(q, k)``: ``(..., m, c)``; materialises A (reference)."""
    return gaussian_kernel(q, k).transpose(-1, -2) @ v


def kernel_matmul(q: Tensor, k: Tensor, w: Tensor) -> Tensor:
    """``A w`` with ``A = gaussian_kernel(q, k)``: ``(..., N, c)``; materialises A (reference)."""
    return gaussian_kernel(q, k) @ w


def newton_alpha(mat: Tensor) -> Tensor:
    """Newton-Schulz start scale ``1 / max_row_sum^2`` per matrix, shape ``(..., 1, 1)``: for a symmetric
    non-negative matrix ``1 / (||mat||_1 ||mat||_inf)``, which guarantees ``alpha sigma_max^2 <= 1``."""
    max_row_sum = mat.sum(-1).amax(-1).clamp_min(torch.finfo(mat.dtype).tiny)
    return max_row_sum.pow(-2)[..., None, None]


def newton_schulz_iterations(mat: Tensor, num_iters: int) -> Tensor:
    """Run Newton-Schulz ``V <- 2V - V mat V`` from ``V0 = alpha * mat``, without autograd.

    ``mat`` must be symmetric with non-negative entries (a Gaussian kernel matrix). ``alpha`` is
    chosen per matrix as ``1 / (||mat||_1 ||mat||_inf) = 1 / max_row_sum^2``: the classical
    sufficient condition for convergence (``alpha * sigma_max^2 <= 1``). It is computed on the
    device (no host synchronisation), and each matrix gets its own alpha, so an image's result never
    depends on its batch mates (one alpha for the whole batch, as in the reference code, does).
    """
    alpha = newton_alpha(mat)
    mat3 = mat.reshape(-1, mat.shape[-2], mat.shape[-1])
    inv = (alpha * mat).reshape_as(mat3)
    for _ in range(num_iters):
        # V <- 2 V - V (mat V), as two batched GEMMs.
        inv = torch.baddbmm(inv, inv, torch.bmm(mat3, inv), beta=2.0, alpha=-1.0)
    return inv.view_as(mat)


def pinv_backward(inv: Tensor, grad: Tensor) -> Tensor:
    """Closed-form gradient of ``inv = mat^-1``: ``d mat = -inv^T grad inv^T``."""
    inv_t = inv.transpose(-1, -2)
    return -(inv_t @ grad @ inv_t)
