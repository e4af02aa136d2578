"""Landmark-side solvers of the SOFT attention: how ``P . X`` (``P`` the pseudo-inverse of the landmark kernel) is
evaluated.

``soft_attention`` needs ``P`` only through the product ``context = P . (A^T V)`` (``m x c``, ``c`` the head dim), so a
solver returns an operator ``x -> P x`` instead of ``P``. For SOFT-Norm ``P = D^-1/2 pinv(Ah) D^-1/2`` with
``D = diag(row sums of Ah)``.

What 20 Newton-Schulz steps compute. They start from ``V_0 = alpha Ah`` with the published models' ``alpha``
(:func:`mmsoft.ops.reference.newton_alpha`: ``2 / r^2`` for ``r`` the largest row sum, halved until the start residual
is small, shared by one image's heads). The residual then squares each step: ``I - V_k Ah = (I - alpha Ah^2)^(2^k)``.
Every ``V_k`` is a polynomial in the symmetric ``Ah``, so ``V_k = f_k(Ah)`` with, per eigenvalue ``lam``,
``f_k(lam) = (1 - (1 - alpha lam^2)^(2^k)) / lam``: ``1 / lam`` for the eigenvalues the iteration has resolved
(``alpha lam^2 2^k >> 1``), ``2^k alpha lam`` (damped, not inverted) for the small ones. After ``h`` halvings the
threshold ``1 / sqrt(2^k alpha)`` is ``r / 2^((21 - h) / 2)`` for 20 steps; on realistic activations ``h`` is 7-8,
so only eigenvalues above about ``r / 100`` are inverted while the landmark kernel's spectrum reaches far below:
the published models compute this spectral filter, not ``Ah^-1``, and the start decides which filter.

* ``'newton'`` (the default of ``soft_attention``, and the backbone's on CUDA through ``'auto'``: the published
  computation, literally): ``num_iters`` Newton-Schulz steps form ``P``
  (batched fp32 GEMMs, ``2 num_iters m^3`` MACs per head, closed-form backward), then ``P x``.
* ``'newton_eigh'``: the same function, evaluated exactly: ``Ah = U diag(lam) U^T`` by a float64 symmetric
  eigendecomposition (``torch.linalg.eigh``, ~``4.5 m^3`` MACs), then ``P x = U (f(lam) * (U^T x))``. No iterations,
  and more accurate than fp32 Newton (float64 throughout, no fp32 rounding accumulated over 40 GEMMs). The fastest
  faithful solver on CPU; on CUDA ``eigh`` synchronises with the host (cuSOLVER reports convergence) and is slower
  than batched GEMMs, so keep ``'newton'`` there unless measured otherwise.
* ``'newton_thin'``: the same function in residual form on the thin right-hand side: ``V_k = alpha Ah prod_{j<k}
  (2I - S_j)`` with ``S_0 = alpha Ah^2``, ``S_{j+1} = 2 S_j - S_j^2`` (``S_j = Ah V_j``), the factors ``(2I - S_j)``
  applied to ``x`` (``m x c``) instead of multiplied into ``P``: ``num_iters`` ``m x m`` GEMMs instead of
  ``2 num_iters``, but fp32 rounding in the residual chain grows with the kernel's conditioning.
* ``'newton_lowrank'`` (the backbone's default on the CPU through ``'auto'``, :func:`resolve_solver`): the same
  function as ``Q f(T) Q^T`` plus coupling plus ``c Pi Ah Pi`` from a rank-64
  subspace (``O(m^2 s)``), certified per matrix, the exact float64 ``eigh`` where not; see
  :mod:`mmsoft.ops.newton_lowrank`.
* ``'cholesky'``: ``(Ah + eps I) Y = X`` by a Cholesky factorisation in float64 (``m^3 / 3`` MACs plus ``2 m^2 c``
  for the two triangular solves), ``eps = 1e-6`` relative to the diagonal of ``Ah`` (exactly 1 for a Gaussian
  kernel). This is ``Ah^-1``: where Newton has converged the same, elsewhere a different model (it inverts the small
  eigenvalues Newton damps); see the accuracy section of ``tools/analysis/benchmark_backbone.py``. Backward is
  autograd through ``cholesky_ex`` / ``cholesky_solve``. A matrix whose factorisation fails (``info != 0``; with the
  float64 ridge only non-finite input can do that) gets ``Y = X / (1 + eps)``, chosen per matrix with ``torch.where``.

The Newton-type solvers share the closed-form backward of ``'newton'`` (``dAh = -P g (P x)^T``, the gradient of an
exact inverse). Why there is no early-stopping Newton: stopping needs a host sync or a fixed iteration budget, and on
real activations 20 steps never converge anyway (see above).

All math runs with autocast disabled, in float32 (float64 for float64 landmarks; Cholesky and the eigendecomposition
always in float64; :mod:`mmsoft.ops.precision`), without ``.item()`` host synchronisation, so it traces under
``torch.compile``.

Adding a solver. A solver is one entry of :data:`SOLVERS`: its name and a :class:`LandmarkSolver` whose ``apply(mat,
x, num_iters)`` returns ``pinv(mat) x`` (your rule for it) for the landmark kernel ``mat (..., m, m)`` and ``x (...,
m, c)``, both in the accumulation dtype, differentiable in both. :func:`landmark_operator` does everything around it
(the kernel, the SOFT-Norm scaling, landmark masks, autocast), so the new name then works everywhere a solver is
chosen: ``soft_attention(..., solver=...)``, the backbone's ``landmark_solver``, the checks at construction, the
tests parametrised over :data:`SOLVERS` and ``tools/analysis/benchmark_backbone.py --solvers``. A solver that hides
work from a jit trace (an autograd Function) also gets a FLOP handle in :mod:`mmsoft.ops.flops`.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from . import newton_lowrank, reference
from .precision import acc_dtype, autocast_disabled

#: Ridge of the ``'cholesky'`` solver, relative to the diagonal of the landmark kernel.
CHOLESKY_EPS = 1e-6

Operator = Callable[[Tensor], Tensor]


def check_num_iters(num_iters: int) -> None:
    """Raise ``ValueError`` unless ``num_iters`` (Newton-Schulz steps of the Newton solvers) is an int >= 0."""
    if isinstance(num_iters, bool) or not isinstance(num_iters, numbers.Integral) or num_iters < 0:
        raise ValueError(f"num_iters (newton_iters) must be an int >= 0, got {num_iters!r}")


# ----------------------------------------------------------------------------------------------- 'newton'
class NewtonPinv(torch.autograd.Function):
    """Newton-Schulz pseudo-inverse with the closed-form backward.

    Autograd never sees the iterations: memory stays one ``m x m`` matrix per head whatever the
    number of iterations, and backward costs two GEMMs instead of 2 x num_iters.
    """

    @staticmethod
    def forward(ctx, mat: Tensor, num_iters: int) -> Tensor:  # type: ignore[override]
        inv = reference.newton_schulz_iterations(mat, num_iters)
        ctx.save_for_backward(inv)
        return inv

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (inv,) = ctx.saved_tensors
        return reference.pinv_backward(inv, grad), None


def _newton_pinv(mat: Tensor, num_iters: int) -> Tensor:
    """:func:`newton_pinv` without the argument checks (for callers that made them)."""
    with autocast_disabled(mat.device.type):
        return NewtonPinv.apply(mat.to(acc_dtype(mat.dtype)), num_iters)


def newton_pinv(mat: Tensor, num_iters: int = 20) -> Tensor:
    """Pseudo-inverse of symmetric non-negative ``mat (..., m, m)`` by ``num_iters`` Newton-Schulz steps.

    Computed in the accumulation dtype (float32; float64 stays float64) whatever the input dtype or autocast state.
    Raises ``ValueError`` for a non-square ``mat`` or a negative ``num_iters``.
    """
    if mat.dim() < 2 or mat.shape[-1] != mat.shape[-2]:
        raise ValueError(f"newton_pinv expects square matrices (..., m, m), got shape {tuple(mat.shape)}")
    check_num_iters(num_iters)
    return _newton_pinv(mat, num_iters)


def landmark_inverse(k: Tensor, sym_norm: bool = True, num_iters: int = 20) -> Tensor:
    """The dense ``P`` of the ``'newton'`` solver for landmarks ``k (..., m, d)``: pinv of their kernel, for
    ``sym_norm`` symmetrically normalised. Shape ``(..., m, m)`` in the accumulation dtype (float32; float64 for
    float64 landmarks). Raises ``ValueError`` for a negative ``num_iters``."""
    check_num_iters(num_iters)
    with autocast_disabled(k.device.type):
        k = k.to(acc_dtype(k.dtype))
        return _normalised_inverse(reference.gaussian_kernel(k, k), _newton_pinv, num_iters, sym_norm)


def _normalised_inverse(kernel: Tensor, inverse: Callable[[Tensor, int], Tensor], num_iters: int,
                        sym_norm: bool) -> Tensor:
    """``inverse(kernel)``, for ``sym_norm`` scaled to ``D^-1/2 P D^-1/2`` (``D``: the kernel's row sums)."""
    inv = inverse(kernel, num_iters)
    if sym_norm:
        d_inv_sqrt = kernel.sum(-1).rsqrt()
        inv = d_inv_sqrt.unsqueeze(-1) * inv * d_inv_sqrt.unsqueeze(-2)
    return inv


# ----------------------------------------------------------------------------------------------- 'newton_eigh'
def newton_filter(eigvals: Tensor, alpha: Tensor, num_iters: int) -> Tensor:
    """``f(lam) = (1 - (1 - alpha lam^2)^(2^num_iters)) / lam`` (0 at ``lam = 0``): what ``num_iters`` Newton-Schulz
    steps from ``alpha Ah`` do to an eigenvalue ``lam`` of ``Ah``. ``alpha`` broadcasts against ``eigvals``.

    ``s = alpha lam^2`` lies in ``[0, 2]`` for the published start (:func:`mmsoft.ops.reference.newton_alpha`); for
    ``num_iters >= 1`` the even power is ``|1 - s|^(2^K) = (1 - u)^(2^K)`` with ``u = min(s, 2 - s)``, evaluated as
    ``exp(2^K log1p(-u))``: no 2^K-fold squaring, and ``1 - (...)`` keeps its relative precision for small ``u``.
    """
    s = (alpha * eigvals.square()).clamp_min(0.0)
    if num_iters == 0:
        damped = s
    else:
        u = torch.minimum(s, 2.0 - s)
        damped = -torch.expm1(math.ldexp(1.0, num_iters) * torch.log1p(-u))
    nonzero = eigvals != 0
    return torch.where(nonzero, damped / torch.where(nonzero, eigvals, torch.ones_like(eigvals)), 0.0)


def newton_eigh_factors(mat: Tensor, num_iters: int) -> tuple[Tensor, Tensor]:
    """``(U, f)`` in float64 with ``newton_pinv(mat, num_iters) = U diag(f) U^T`` for symmetric ``mat (..., m, m)``.

    Float64 is what makes it accurate: a float32 eigendecomposition of a real landmark kernel (eigenvalues down to
    1e-8 of the largest) is ~6e-4 off the exact function, float32 Newton ~7e-6, this ~4e-13 (measured).

    Non-finite input stays where ``'newton'`` puts it: ``torch.linalg.eigh`` raises for the whole batch when one
    matrix holds a NaN / inf, so such matrices are decomposed as the identity instead and their ``f`` set to NaN;
    ``alpha`` (shared by the matrices of one index of the first dim, :func:`mmsoft.ops.reference.newton_alpha`) is
    NaN for their batch mates along that dim, as in Newton-Schulz. Chosen per matrix on the device, no host sync.
    """
    with torch.profiler.record_function(reference.LANDMARK_SOLVE_RANGE):
        mat64 = mat.to(torch.float64)
        finite = torch.isfinite(mat64).all(-1).all(-1)[..., None]                                   # (..., 1)
        eye = torch.eye(mat.shape[-1], dtype=torch.float64, device=mat.device)
        eigvals, eigvecs = torch.linalg.eigh(torch.where(finite[..., None], mat64, eye))
        filt = newton_filter(eigvals, reference.newton_alpha(mat64)[..., 0], num_iters)
        return eigvecs, torch.where(finite, filt, math.nan)


def _apply_factors(eigvecs: Tensor, filt: Tensor, x: Tensor) -> Tensor:
    """``U diag(f) U^T x`` without forming the ``m x m`` product, in ``eigvecs``' dtype."""
    return eigvecs @ (filt.unsqueeze(-1) * (eigvecs.transpose(-1, -2) @ x.to(eigvecs.dtype)))


class NewtonEighApply(torch.autograd.Function):
    """``newton_pinv(mat) @ x`` through the eigendecomposition of ``mat``, with the closed-form backward of 'newton'.

    The forward runs in float64; the factors are kept for backward in ``x``'s dtype (float32: the ``m x m`` memory of
    ``'newton'``'s saved inverse), which only the gradient sees. Double backward (``create_graph=True``) applies
    ``P`` through this Function again instead of through the saved factors, which autograd would take for constants
    (silently dropping the second derivative through ``P``): second derivatives are then those of ``'newton'``.
    """

    @staticmethod
    def forward(ctx, mat: Tensor, x: Tensor, num_iters: int) -> Tensor:  # type: ignore[override]
        eigvecs, filt = newton_eigh_factors(mat, num_iters)
        out = _apply_factors(eigvecs, filt, x).to(x.dtype)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # mat is the landmark kernel, which autograd keeps anyway (the output of its exp).
            ctx.save_for_backward(mat, eigvecs.to(x.dtype), filt.to(x.dtype), out)
        ctx.num_iters = num_iters
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        mat, eigvecs, filt, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: P g must stay differentiable in mat
            p_grad = NewtonEighApply.apply(mat, grad, ctx.num_iters)
        else:
            p_grad = _apply_factors(eigvecs, filt, grad).to(grad.dtype)  # P is symmetric: P^T g = P g
        return reference.pinv_apply_backward(p_grad, out), p_grad, None


# ----------------------------------------------------------------------------------------------- 'newton_thin'
def newton_thin_apply(mat: Tensor, x: Tensor, num_iters: int) -> Tensor:
    """``newton_pinv(mat, num_iters) @ x`` without forming the pseudo-inverse (residual form, no autograd)."""
    with torch.profiler.record_function(reference.LANDMARK_SOLVE_RANGE):
        alpha = reference.newton_alpha(mat).reshape(-1, 1, 1)  # grouped on mat's own leading dims, then flattened
        mat3 = mat.reshape(-1, mat.shape[-2], mat.shape[-1])
        x3 = x.reshape(-1, x.shape[-2], x.shape[-1])
        # V_0 x first: every factor (2I - S_j) has eigenvalues in [1, 2], so the running product only grows towards
        # the result and never holds the 2^num_iters-times amplified directions that alpha Ah would scale back down at
        # the end.
        y = alpha * torch.bmm(mat3, x3)
        if num_iters == 0:
            return y.view_as(x)
        resid = alpha * torch.bmm(mat3, mat3)  # S_0 = alpha Ah^2 = Ah V_0
        for j in range(num_iters):
            y = torch.baddbmm(y, resid, y, beta=2.0, alpha=-1.0)  # y <- (2I - S_j) y
            if j + 1 < num_iters:
                resid = torch.baddbmm(resid, resid, resid, beta=2.0, alpha=-1.0)  # S_{j+1} = 2 S_j - S_j^2
        return y.view_as(x)


class NewtonThinApply(torch.autograd.Function):
    """``newton_pinv(mat) @ x`` by :func:`newton_thin_apply`, with the closed-form backward of ``'newton'``.

    Backward applies ``P`` through this Function again, so that double backward differentiates it with the same
    closed form (second derivatives of ``'newton'``) rather than through the unrolled residual iterations.
    """

    @staticmethod
    def forward(ctx, mat: Tensor, x: Tensor, num_iters: int) -> Tensor:  # type: ignore[override]
        out = newton_thin_apply(mat, x, num_iters)
        ctx.save_for_backward(mat, out)
        ctx.num_iters = num_iters
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        mat, out = ctx.saved_tensors
        p_grad = NewtonThinApply.apply(mat, grad.contiguous(), ctx.num_iters)  # P is symmetric: P^T g = P g
        return reference.pinv_apply_backward(p_grad, out), p_grad, None


# ----------------------------------------------------------------------------------------------- 'cholesky'
def ridge_cholesky_solve(mat: Tensor, x: Tensor, eps: float = CHOLESKY_EPS) -> Tensor:
    """``(mat + eps * mean(diag(mat)) I)^-1 x`` for symmetric PSD ``mat (..., m, m)`` and ``x (..., m, c)``, in float64.

    Matrices whose factorisation fails get ``x / (mean diag + ridge)`` (per matrix, no host sync).
    """
    with torch.profiler.record_function(reference.LANDMARK_SOLVE_RANGE):
        mat64, x64 = mat.to(torch.float64), x.to(torch.float64)
        scale = mat64.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]  # 1 for a Gaussian kernel
        eye = torch.eye(mat.shape[-1], dtype=torch.float64, device=mat.device)
        chol, info = torch.linalg.cholesky_ex(mat64 + (eps * scale) * eye)
        ok = (info == 0)[..., None, None]
        # A failed factorisation leaves garbage (possibly inf / NaN) in chol: solve with a safe one and discard it.
        chol = torch.where(ok, chol, eye)
        out = torch.cholesky_solve(x64, chol)
        return torch.where(ok, out, x64 / (scale * (1 + eps)))


# ----------------------------------------------------------------------------------------------- the table
class LandmarkSolver(NamedTuple):
    """One entry of :data:`SOLVERS`.

    ``apply(mat, x, num_iters)``: ``pinv(mat) x`` for the landmark kernel ``mat (..., m, m)`` and ``x (..., m, c)``,
    both in the accumulation dtype (autocast already off), differentiable in both; ``num_iters`` is the Newton-Schulz
    step count (solvers that do not iterate ignore it).
    ``inverse(mat, num_iters)`` (optional): the dense ``(..., m, m)`` matrix, for a solver that forms it anyway; without
    a landmark mask :func:`landmark_operator` then folds the SOFT-Norm scaling into it once and applies it by one GEMM.
    """

    apply: Callable[[Tensor, Tensor, int], Tensor]
    inverse: Callable[[Tensor, int], Tensor] | None = None


def _newton_apply(mat: Tensor, x: Tensor, num_iters: int) -> Tensor:
    return _newton_pinv(mat, num_iters) @ x


def _cholesky_apply(mat: Tensor, x: Tensor, num_iters: int) -> Tensor:
    return ridge_cholesky_solve(mat, x).to(x.dtype)


#: The landmark solvers by name: ``soft_attention(..., solver=...)`` and the backbone's ``landmark_solver`` accept
#: exactly these keys. Add a solver here (see the module docstring).
SOLVERS: dict[str, LandmarkSolver] = {
    "newton": LandmarkSolver(apply=_newton_apply, inverse=_newton_pinv),
    "newton_eigh": LandmarkSolver(apply=NewtonEighApply.apply),
    "newton_thin": LandmarkSolver(apply=NewtonThinApply.apply),
    "cholesky": LandmarkSolver(apply=_cholesky_apply),
    "newton_lowrank": LandmarkSolver(apply=newton_lowrank.newton_lowrank_apply),
}


#: The solver name that picks one by device (:func:`resolve_solver`); the backbone's default.
AUTO_SOLVER = "auto"


def resolve_solver(solver: str, device_type: str) -> str:
    """``solver``, or for :data:`AUTO_SOLVER` the one for tensors on ``device_type``: ``'newton_lowrank'`` on the CPU
    (the published function, certified to 1e-5 per matrix, at a fraction of ``'newton'``'s time: RetinaNet SOFT-T
    forward at 800x1333 faster than mmdet's PVT-T, see the README's "Speed"), ``'newton'`` elsewhere (on CUDA the
    literal batched GEMMs; the low-rank path has not been measured on a GPU)."""
    if solver != AUTO_SOLVER:
        return solver
    return "newton_lowrank" if device_type == "cpu" else "newton"


def check_solver(solver: str) -> None:
    """Raise ``ValueError`` unless ``solver`` is a key of :data:`SOLVERS` or :data:`AUTO_SOLVER`."""
    if solver != AUTO_SOLVER and solver not in SOLVERS:
        raise ValueError(f"landmark solver must be {AUTO_SOLVER!r} or one of {tuple(SOLVERS)}, got {solver!r}")


# ----------------------------------------------------------------------------------------------- the operator
def landmark_operator(k: Tensor, sym_norm: bool = True, num_iters: int = 20, solver: str = "newton",
                      landmark_mask: Tensor | None = None) -> Operator:
    """The operator ``x (..., m, c) -> P x`` for landmarks ``k (..., m, d)``; results in the accumulation dtype
    (float32; float64 for float64 landmarks). ``solver`` is a key of :data:`SOLVERS`; ``num_iters`` applies to the
    Newton solvers.

    ``landmark_mask`` (bool, broadcastable to ``k.shape[:-1]``, False = masked) computes, for the valid landmarks,
    exactly the operator of the valid landmarks alone, and zero for the masked ones: see :func:`mask_landmark_kernel`.
    Raises ``ValueError`` for an unknown ``solver`` or a negative ``num_iters``, ``ValueError`` / ``TypeError`` for a
    mask that does not fit.
    """
    check_solver(solver)
    check_num_iters(num_iters)
    return build_operator(k, sym_norm, num_iters, resolve_solver(solver, k.device.type), landmark_mask)


def build_operator(k: Tensor, sym_norm: bool, num_iters: int, solver: str, landmark_mask: Tensor | None) -> Operator:
    """:func:`landmark_operator` for arguments the caller has checked (``soft_attention`` checks them once)."""
    entry = SOLVERS[solver]
    dtype = acc_dtype(k.dtype)
    with autocast_disabled(k.device.type):
        kf = k.to(dtype)
        kernel = reference.gaussian_kernel(kf, kf)
        if landmark_mask is None and entry.inverse is not None:  # form the dense P once
            inv = _normalised_inverse(kernel, entry.inverse, num_iters, sym_norm)
            return lambda x: inv.to(x.dtype) @ x
        if landmark_mask is not None:
            landmark_mask = check_landmark_mask(landmark_mask, k)
            kernel = mask_landmark_kernel(kernel, landmark_mask)
            keep = landmark_mask.unsqueeze(-1)
        d_inv_sqrt = kernel.sum(-1).rsqrt().unsqueeze(-1) if sym_norm else None

    def apply(x: Tensor) -> Tensor:
        with autocast_disabled(x.device.type):
            x = x.to(dtype)
            if landmark_mask is not None:
                x = torch.where(keep, x, 0.0)
            if d_inv_sqrt is not None:
                x = d_inv_sqrt * x
            y = entry.apply(kernel, x, num_iters)
            y = d_inv_sqrt * y if d_inv_sqrt is not None else y
            return y if landmark_mask is None else torch.where(keep, y, 0.0)

    return apply


def check_landmark_mask(mask: Tensor, k: Tensor) -> Tensor:
    """``mask`` broadcast to ``k.shape[:-1]``; raises ``ValueError`` / ``TypeError`` for a mask that does not fit."""
    if mask.dtype != torch.bool:
        raise TypeError(f"landmark_mask must be a bool tensor (True = valid landmark), got {mask.dtype}")
    if mask.device != k.device:
        raise ValueError(f"landmark_mask is on {mask.device}, the landmarks on {k.device}")
    try:
        return mask.expand(k.shape[:-1])
    except RuntimeError:
        raise ValueError(f"landmark_mask of shape {tuple(mask.shape)} does not broadcast to the landmarks' "
                         f"{tuple(k.shape[:-1])} (k is (..., m, d))") from None


def mask_landmark_kernel(kernel: Tensor, mask: Tensor) -> Tensor:
    """The landmark kernel ``kernel (..., m, m)`` with the rows and columns of masked landmarks (``mask (..., m)``
    False) replaced by ``c`` times those of the identity, ``c = min(1, r_valid)`` with ``r_valid`` the largest row sum
    of the valid block of that matrix (1 is the Gaussian kernel's own diagonal).

    Up to a permutation the result is ``[[K_valid, 0], [0, c I]]``, and every solver keeps it block-diagonal: the
    Newton-Schulz iterates and the eigen-filter are functions of the matrix, the Cholesky factor and the SOFT-Norm
    row sums are per block. The published Newton start (:func:`mmsoft.ops.reference.newton_alpha`) is untouched:
    ``c`` does not raise the largest row sum ``r`` of any matrix, and since ``c <= r``, ``alpha c^2 <= 2`` keeps the
    masked columns of ``|I - alpha K^2|`` at sum ``|1 - alpha c^2| <= 1``, never above the halving bound. So the valid
    block computes what the valid landmarks alone compute (the Cholesky ridge, relative to the mean diagonal, moves by
    rounding only). A matrix without any valid landmark gets ``c = 1``.
    """
    pair = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    zero = torch.zeros((), dtype=kernel.dtype, device=kernel.device)
    valid = torch.where(pair, kernel, zero)
    row_max = valid.sum(-1).amax(-1, keepdim=True).detach()                        # (..., 1)
    scale = torch.where(row_max > 0, row_max.clamp_max(1.0), torch.ones_like(row_max))
    eye = torch.eye(kernel.shape[-1], dtype=torch.bool, device=kernel.device)
    return torch.where(eye & ~mask.unsqueeze(-1), scale.unsqueeze(-1), valid)
