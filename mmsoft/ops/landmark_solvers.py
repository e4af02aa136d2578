"""Landmark-side solvers of the SOFT attention: how ``P . X`` (``P`` the pseudo-inverse of the landmark kernel) is
evaluated.

``soft_attention`` needs ``P`` only through the product ``context = P . (A^T V)`` (``m x c``, ``c`` the head dim), so a
solver returns an operator ``x -> P x`` instead of ``P``. For SOFT-Norm ``P = D^-1/2 pinv(Ah) D^-1/2`` with
``D = diag(row sums of Ah)``.

* ``'newton'`` (default, faithful to the published models): ``num_iters`` Newton-Schulz steps form ``P`` (batched
  fp32 GEMMs, ``2 num_iters m^3`` MACs per head, closed-form backward), then ``P x``.
* ``'newton_thin'``: the same function as ``'newton'`` (the same ``num_iters`` Newton-Schulz steps from the same
  per-matrix ``alpha``), evaluated in residual form on the thin right-hand side: ``V_k = alpha Ah prod_{j<k}(2I - S_j)``
  with ``S_0 = alpha Ah^2``, ``S_{j+1} = 2 S_j - S_j^2`` (``S_j = Ah V_j``, kept as the residual's complement so that
  small eigenvalues keep their relative precision), and the factors ``(2I - S_j)`` applied to ``x`` (``m x c``)
  instead of multiplied into ``P``. ``num_iters`` ``m x m`` GEMMs instead of ``2 num_iters``: half the forward cost.
  Backward uses the same closed form as ``'newton'`` (``dAh = -P g (P x)^T``), recomputing ``P g`` (another
  ``num_iters`` GEMMs), so forward+backward costs what ``'newton'`` costs.
* ``'cholesky'``: ``(Ah + eps I) Y = X`` by a Cholesky factorisation in float64 (``m^3 / 3`` MACs plus ``2 m^2 c``
  for the two triangular solves); the inverse is never formed. ``eps = 1e-6`` relative to the diagonal of ``Ah``
  (exactly 1 for a Gaussian kernel). Where Newton-Schulz has converged (every eigenvalue ``lam`` of ``Ah`` with
  ``(1 - lam^2 / max_row_sum^2)^(2^num_iters)`` negligible) both give ``Ah^-1 X`` up to ``eps / lam_min``; for
  eigenvalues Newton has not reached it differs (Newton damps them, an exact solve does not): see the accuracy
  section of ``tools/analysis/benchmark_backbone.py`` for what that means on real activations. Backward is autograd
  through ``cholesky_ex`` / ``cholesky_solve`` (the exact gradient of the ridge solve). A matrix whose factorisation
  fails (``info != 0``; with the float64 ridge only non-finite input can do that) gets ``Y = X / (1 + eps)``, chosen
  per matrix with ``torch.where``: no host synchronisation, and batch mates are unaffected.

Why there is no early-stopping Newton (``'newton_tol'``): stopping needs a host sync or a fixed iteration budget (with
``torch.where`` freezing converged matrices, every iteration still costs its GEMMs), and on real activations
Newton-Schulz never converges within 20 iterations anyway: the landmark kernel's eigenvalues reach down to ~1e-4 of
``max_row_sum`` while 20 steps resolve only eigenvalues above ~``max_row_sum / 1024`` (3-4% of them for SOFT-Tiny at
800x1333). The 20-step result is a spectrally filtered inverse, and that filter is what the published models compute.

All math runs in float32 (float64 for float64 landmarks; the Cholesky factorisation always in float64) with
autocast disabled, without host synchronisation (no ``.item()``), so it traces under ``torch.compile``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import reference

#: Names accepted by ``soft_attention(..., solver=...)`` and the backbone's ``landmark_solver``.
SOLVERS = ("newton", "newton_thin", "cholesky")
#: Ridge of the ``'cholesky'`` solver, relative to the diagonal of the landmark kernel.
CHOLESKY_EPS = 1e-6

Operator = Callable[[Tensor], Tensor]


def check_solver(solver: str) -> None:
    """Raise ``ValueError`` unless ``solver`` is one of :data:`SOLVERS`."""
    if solver not in SOLVERS:
        raise ValueError(f"landmark solver must be one of {SOLVERS}, got {solver!r}")


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the landmark-side math for landmarks of ``dtype``: float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def ridge_cholesky_solve(mat: Tensor, x: Tensor, eps: float = CHOLESKY_EPS) -> Tensor:
    """``(mat + eps * mean(diag(mat)) I)^-1 x`` for symmetric PSD ``mat (..., m, m)`` and ``x (..., m, c)``, in float64.

    Matrices whose factorisation fails get ``x / (mean diag + ridge)`` (per matrix, no host sync).
    """
    mat64, x64 = mat.to(torch.float64), x.to(torch.float64)
    scale = mat64.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]  # 1 for a Gaussian kernel
    eye = torch.eye(mat.shape[-1], dtype=torch.float64, device=mat.device)
    chol, info = torch.linalg.cholesky_ex(mat64 + (eps * scale) * eye)
    ok = (info == 0)[..., None, None]
    # A failed factorisation leaves garbage (possibly inf / NaN) in chol: solve with a safe one and discard it.
    chol = torch.where(ok, chol, eye)
    out = torch.cholesky_solve(x64, chol)
    return torch.where(ok, out, x64 / (scale * (1 + eps)))


def newton_thin_apply(mat: Tensor, x: Tensor, num_iters: int) -> Tensor:
    """``newton_pinv(mat, num_iters) @ x`` without forming the pseudo-inverse (residual form, no autograd)."""
    mat3 = mat.reshape(-1, mat.shape[-2], mat.shape[-1])
    x3 = x.reshape(-1, x.shape[-2], x.shape[-1])
    alpha = mat3.sum(-1).amax(-1).clamp_min(torch.finfo(mat.dtype).tiny).pow(-2)[:, None, None]
    # V_0 x first: every factor (2I - S_j) has eigenvalues in [1, 2], so the running product only grows towards the
    # result and never holds the 2^num_iters-times amplified directions that alpha Ah would scale back down at the end.
    y = alpha * torch.bmm(mat3, x3)
    if num_iters == 0:
        return y.view_as(x)
    resid = alpha * torch.bmm(mat3, mat3)  # S_0 = alpha Ah^2 = Ah V_0
    for j in range(num_iters):
        y = torch.baddbmm(y, resid, y, beta=2.0, alpha=-1.0)  # y <- (2I - S_j) y
        if j + 1 < num_iters:
            resid = torch.baddbmm(resid, resid, resid, beta=2.0, alpha=-1.0)  # S_{j+1} = 2 S_j - S_j^2
    return y.view_as(x)


class _NewtonThinApply(torch.autograd.Function):
    """``pinv_newton(mat) @ x`` by :func:`newton_thin_apply`, with the closed-form backward of ``'newton'``."""

    @staticmethod
    def forward(ctx, mat: Tensor, x: Tensor, num_iters: int) -> Tensor:  # type: ignore[override]
        out = newton_thin_apply(mat, x, num_iters)
        ctx.save_for_backward(mat, out)
        ctx.num_iters = num_iters
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        mat, out = ctx.saved_tensors
        p_grad = newton_thin_apply(mat, grad.contiguous(), ctx.num_iters)  # P is symmetric: P^T g = P g
        return -(p_grad @ out.transpose(-1, -2)), p_grad, None


def landmark_operator(k: Tensor, sym_norm: bool = True, num_iters: int = 20, solver: str = "newton") -> Operator:
    """The operator ``x (..., m, c) -> P x`` for landmarks ``k (..., m, d)``; results in float32 (float64 for float64
    landmarks). ``solver`` is one of :data:`SOLVERS`; ``num_iters`` applies to the Newton solvers."""
    check_solver(solver)
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0, got {num_iters}")
    if solver == "newton":
        from .soft_attention import landmark_inverse  # late import: soft_attention imports this module

        inv = landmark_inverse(k, sym_norm=sym_norm, num_iters=num_iters)
        return lambda x: inv.to(x.dtype) @ x

    dtype = work_dtype(k.dtype)
    with torch.autocast(device_type=k.device.type, enabled=False):
        kf = k.to(dtype)
        kernel = reference.gaussian_kernel(kf, kf)
        d_inv_sqrt = kernel.sum(-1).rsqrt().unsqueeze(-1) if sym_norm else None

    def apply(x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(dtype)
            if d_inv_sqrt is not None:
                x = d_inv_sqrt * x
            if solver == "newton_thin":
                y = _NewtonThinApply.apply(kernel, x, num_iters)
            else:
                y = ridge_cholesky_solve(kernel, x).to(dtype)
            return d_inv_sqrt * y if d_inv_sqrt is not None else y

    return apply


def landmark_solve(k: Tensor, x: Tensor, sym_norm: bool = True, num_iters: int = 20, solver: str = "newton") -> Tensor:
    """``P x`` for landmarks ``k (..., m, d)`` and ``x (..., m, c)``, see :func:`landmark_operator`."""
    return landmark_operator(k, sym_norm=sym_norm, num_iters=num_iters, solver=solver)(x)
