"""The ``'newton_lowrank'`` landmark solver: the faithful 20-step Newton-Schulz function ``P = f(Ah)`` (see
:mod:`mmsoft.ops.landmark_solvers`) from a low-rank Rayleigh-Ritz evaluation of its nonlinear part, with a certificate
per matrix and the exact eigendecomposition where the certificate fails.

Why it works. ``f(lam) = (1 - (1 - alpha lam^2)^(2^K)) / lam = c lam - c^2 lam^3 / 2 + ...`` with ``c = 2^K alpha``:
it departs from the linear ``c lam`` only for the eigenvalues near or above the threshold ``lam* = 1 / sqrt(c)``, by
a relative ``(lam / lam*)^2 / 2``. Realistic landmark kernels of trained-like models have few eigenvalues above
``lam* / 40`` (golden seeded weights, 800x1344: 6-29 of m = 1,050 per head, and as few at m = 256 or 2,048: the count
does not grow with the image), so a subspace of ``s = 64`` dimensions carries the whole nonlinear part and the work
is ``O(m^2 s)``, not the ``O(m^3)`` of an eigendecomposition or of 20 Newton steps. Kernels with a flat spectrum
(landmarks spread apart, e.g. a randomly initialised model: hundreds of eigenvalues above ``lam* / 40``) fail the
certificate and take ``eigh``, so the result is the faithful function either way; only the time differs.

The computation, per matrix, batched, GEMM-shaped and without an eigendecomposition:

1. ``Q (m x s)``: subspace iteration from ``s`` evenly spaced columns of ``Ah`` (a deterministic start),
   ``power_iters`` float32 products ``Ah Q`` with a Householder QR after each, then one float64 product and QR.
2. ``T = Q^T Ah Q``, the residual ``R = Ah Q - Q T`` and ``W = f(T) T^-1 = alpha sum_{j < 2^K} (I - alpha T^2)^j``
   (``K`` doublings of ``s x s`` GEMMs, no inverse: the polynomial Newton builds), ``f(T) = T W``; all float64.
3. With ``Pi = I - Q Q^T`` (``Ah = Q T Q^T + R Q^T + Q R^T + Pi Ah Pi`` exactly)::

       P x = Q f(T) Q^T x + R W Q^T x + Q W R^T x + c Pi Ah Pi x

   in float64, never forming ``P`` (``m^2 c`` for ``Ah x``). ``W`` is the divided difference ``f[theta, 0]``, so the
   coupling terms are first-order exact for a small remainder, and nothing cancels for the inverted eigenvalues (no
   ``c Ah - c Q T Q^T``). Backward applies ``P`` the same way to the gradient (the closed form of ``'newton'``,
   ``dAh = -P g (P x)^T``), from the saved ``O(m s)`` factors.

Certificate, per matrix on the device: an estimate of the relative spectral-norm error of ``P`` (relative to
``max f = 0.638 sqrt(c)``) from the remainder ``tail = |Pi Ah Pi|_F / lam*`` (bounds its largest eigenvalue, where
``c lam`` stands in for ``f``), ``resid = |R|_F / lam*`` and the weighted residual ``|R (W - c I)|_F / sqrt(c)``:
``(tail^3 / 2 + 2 (weighted + resid tail^2) + weighted resid) / 0.638``. It is first order, not a proof; it bounds the
measured error (``tests/ops/test_newton_lowrank.py``) and on the realistic kernels above exceeds it by orders of
magnitude. A matrix whose estimate exceeds ``tolerance`` (default 1e-5) or is not finite is evaluated as
``P x = U (f(L) * (U^T x))`` by the float64 ``eigh`` of ``'newton_eigh'``. Eagerly only the failing matrices are
decomposed (one host read of the mask: free on the CPU, a sync on CUDA), and when every matrix of a call shows a
flat spectrum already in the float32 iterate (``LOWRANK_EARLY_REJECT``) the float64 steps are skipped: the attempt then
costs ~5-10 % of the eigendecomposition. Under ``torch.compile`` a ``torch.cond`` decomposes all of the call's matrices
when any fails, so it traces with ``fullgraph=True``. Non-finite matrices get a
NaN ``P`` (as ``'newton'``), their batch mates along the first dim too (they share ``alpha``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import landmark_solvers, reference

#: Columns of the subspace ``Q``.
LOWRANK_RANK = 64
#: Float32 subspace-iteration steps before the float64 one (at least 1). One suffices on the golden seeded SOFT-T
#: weights and a photograph (800x1344 and 1536x2560, 40 kernels each: all certified, largest estimate 2.6e-6 vs 2.1e-6
#: with two) and saves ~10 % of the solve.
LOWRANK_POWER_ITERS = 1
#: Eagerly, when ``|Pi Ah Pi|_F / lam*`` of the float32 iterate exceeds this for every matrix of a call, the float64
#: steps are skipped and the eigendecomposition taken at once (certification needs ~0.02; a flat spectrum gives >> 1).
LOWRANK_EARLY_REJECT = 1.0
#: Largest accepted error estimate of the low-rank ``P`` (relative, spectral norm); above it the matrix is
#: evaluated through its eigendecomposition.
LOWRANK_TOLERANCE = 1e-5
#: ``max phi`` of ``phi(x) = (1 - exp(-x^2)) / x`` (at ``x = 1.121``): ``f(lam) = sqrt(c) phi(sqrt(c) lam)`` (with
#: ``(1 - s)^(2^K) = exp(-2^K s)``), so the largest value of ``f`` is ``0.638 sqrt(c)``.
_F_PEAK = 0.6382


#: Largest float64 row block (bytes, all matrices of a call) of :class:`Float64Matrix`.
FLOAT64_BLOCK_BYTES = 16 << 20


class Float64Matrix:
    """Symmetric matrices ``(..., m, m)`` read in float64: every float64 operation of the solver goes through here.

    A float64 tensor is used as it is, and so is a float32 one converted once where the conversion is cheap (CUDA's
    caching allocator, ``torch.compile``). Eagerly on the CPU a float32 ``mat`` is instead read a block of rows at a
    time (at most :data:`FLOAT64_BLOCK_BYTES`, one buffer reused by every block): a whole float64 copy is a fresh
    allocation the size of ``mat`` twice over, and on the CPU its first touch (page faults) costs ~10x the copy
    itself (10 heads x 1,050^2: 38 ms instead of 3 ms, one thread; 10 x 3,840^2: 0.53 s) in forward and again in
    backward. The values are the same either way: float64 products of the exactly converted float32 entries.
    """

    def __init__(self, mat: Tensor):
        self.mat = mat
        self.shape = mat.shape
        blocked = mat.dtype != torch.float64 and mat.device.type == "cpu" and not torch.compiler.is_compiling()
        self._whole = None if blocked else mat.to(torch.float64)

    def whole(self) -> Tensor:
        """The whole float64 matrix (a copy for a float32 ``mat``: the eigendecomposition fallback needs it)."""
        return self._whole if self._whole is not None else self.mat.to(torch.float64)

    def _row_blocks(self):
        """``(start, stop, block)``: float64 copies of consecutive row blocks ``mat[..., start:stop, :]``."""
        m = self.shape[-1]
        per_row = max(1, math.prod(self.shape[:-2]) * m) * 8  # bytes of one row of every matrix, in float64
        rows = max(1, min(m, FLOAT64_BLOCK_BYTES // per_row))
        buffer = torch.empty((*self.shape[:-2], rows, m), dtype=torch.float64, device=self.mat.device)
        for start in range(0, m, rows):
            stop = min(m, start + rows)
            block = buffer[..., :stop - start, :]
            block.copy_(self.mat[..., start:stop, :])
            yield start, stop, block

    def matmul(self, y: Tensor) -> Tensor:
        """``mat y`` in float64 for ``y (..., m, n)`` (float64)."""
        if self._whole is not None:
            return self._whole @ y
        out = y.new_empty((*torch.broadcast_shapes(self.shape[:-2], y.shape[:-2]), self.shape[-2], y.shape[-1]))
        for start, stop, block in self._row_blocks():
            out[..., start:stop, :] = block @ y
        return out

    def row_sums_and_norms_sq(self) -> tuple[Tensor, Tensor]:
        """Row sums and squared row norms ``(..., m)`` (float64)."""
        if self._whole is not None:
            return self._whole.sum(-1), torch.linalg.vector_norm(self._whole, dim=-1).square()
        sums = self.mat.new_empty(self.shape[:-1], dtype=torch.float64)
        norms_sq = torch.empty_like(sums)
        for start, stop, block in self._row_blocks():
            sums[..., start:stop] = block.sum(-1)
            norms_sq[..., start:stop] = torch.linalg.vector_norm(block, dim=-1)
        return sums, norms_sq.square_()


def as_float64(mat64: Tensor | Float64Matrix) -> Float64Matrix:
    """``mat64`` as a :class:`Float64Matrix` (a tensor is wrapped; a float64 one is not copied)."""
    return mat64 if isinstance(mat64, Float64Matrix) else Float64Matrix(mat64)


def _orthonormal(y: Tensor) -> Tensor:
    """An orthonormal basis of the columns of ``y (..., m, s)`` (Householder QR: orthonormal also when ``y`` is
    rank deficient)."""
    return torch.linalg.qr(y).Q


def subspace_iteration(mat: Tensor, rank: int, power_iters: int) -> tuple[Tensor, Tensor]:
    """``(Q, mat Q)`` after ``power_iters >= 1`` steps of subspace iteration in ``mat``'s dtype for the symmetric
    ``mat (..., m, m)``, from ``s = min(rank, m)`` evenly spaced columns of ``mat``: ``Q (..., m, s)`` orthonormal."""
    m = mat.shape[-1]
    cols = torch.linspace(0, m - 1, min(rank, m), device=mat.device).round().long()
    q = _orthonormal(mat[..., cols])
    y = mat @ q
    for _ in range(power_iters - 1):
        q = _orthonormal(y)
        y = mat @ q
    return q, y


def _tail(mat_norm_sq: Tensor, aq: Tensor, q: Tensor) -> Tensor:
    """``|Pi Ah Pi|_F`` (float64, ``(...)``) for orthonormal ``q``, ``aq = Ah q`` and ``mat_norm_sq = |Ah|_F^2``."""
    norm = torch.linalg.matrix_norm
    aq = aq.to(torch.float64)
    return (mat_norm_sq - 2 * norm(aq).square() + norm(q.to(torch.float64).transpose(-1, -2) @ aq).square()).clamp_min(
        0).sqrt()


def newton_series(t: Tensor, alpha: Tensor, num_iters: int) -> Tensor:
    """``f(T) T^-1 = alpha sum_{j < 2^K} (I - alpha T^2)^j`` (``K = num_iters``) for symmetric ``t (..., s, s)``, by
    ``K`` doublings of the sum: no inverse, defined also for singular ``T``. ``f(T) = T (f(T) T^-1)`` is then ``K``
    Newton-Schulz steps from ``alpha T``, computed without the cancellation of ``c T - ...`` for the resolved
    eigenvalues. Per eigenvalue it is the divided difference ``f[theta, 0]``: ``c`` for ``theta << lam*``,
    ``1 / theta^2`` above."""
    eye = torch.eye(t.shape[-1], dtype=t.dtype, device=t.device)
    power = eye - alpha * (t @ t)  # M^(2^j)
    total = eye.expand_as(power)   # sum_{i < 2^j} M^i
    for _ in range(num_iters):
        total = total + power @ total
        power = power @ power
    return alpha * total


class LowrankFactors(NamedTuple):
    """``P x = Q f(T) Q^T x + R W Q^T x + Q W R^T x + c Pi Ah Pi x`` for the certified matrices (``Pi = I - Q Q^T``),
    ``P x = U (f * (U^T x))`` where ``exact``."""

    q: Tensor | None         #: (..., m, s) orthonormal basis of the dominant subspace (float64); None (also ``ft``,
                             #: ``w``, ``r``) when every matrix takes the eigendecomposition
    ft: Tensor | None        #: (..., s, s) f(T) (float64)
    w: Tensor | None         #: (..., s, s) W = f(T) T^-1, the coupling weights (float64)
    r: Tensor | None         #: (..., m, s) the residual R = Ah Q - Q T (float64)
    c: Tensor                #: (..., 1, 1) 2^K alpha (float64)
    exact: Tensor            #: (...) bool: the matrix failed the certificate and is evaluated by ``eigvecs``, ``filt``
    eigvecs: Tensor | None   #: (..., m, m) its eigenvectors U (0 for the others); None when no matrix failed
    filt: Tensor | None      #: (..., m) f of its eigenvalues, NaN for a non-finite matrix (0 for the others)
    #: (..., m, c) ``Ah Pi x`` (float64) for the ``x`` the factors were built with (computed in the same GEMM as
    #: ``Ah Q``: one pass over ``Ah`` instead of two); None without one
    tail_rhs: Tensor | None = None


def lowrank_factors(mat: Tensor, mat64: Tensor | Float64Matrix, alpha: Tensor, num_iters: int, rank: int = LOWRANK_RANK,
                    power_iters: int = LOWRANK_POWER_ITERS, iterate: tuple[Tensor, Tensor] | None = None,
                    mat_norm_sq: Tensor | None = None,
                    rhs: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """``(Q, f(T), W, R, err, tail_rhs)`` of the low-rank evaluation (see :class:`LowrankFactors`) of the
    ``num_iters``-step Newton-Schulz function of the symmetric ``mat (..., m, m)`` (``mat64``: the same in float64,
    or its :class:`Float64Matrix`) with start ``alpha (..., 1, 1)``, all float64, and its certificate ``err (...)``:
    the estimated relative error of ``P`` (see the module docstring; NaN or inf for a non-finite ``mat``).
    ``iterate``: :func:`subspace_iteration`'s result and ``mat_norm_sq``: ``|mat64|_F^2 (...)``, when already computed
    (each is a pass over the ``m x m`` matrices). ``rhs (..., m, c)``: also ``tail_rhs = mat64 Pi rhs``, from the GEMM
    that forms ``mat64 Q`` (else None)."""
    if power_iters < 1:
        raise ValueError(f"power_iters must be >= 1, got {power_iters}")
    _, y = iterate if iterate is not None else subspace_iteration(mat, rank, power_iters)
    mat64 = as_float64(mat64)
    q = _orthonormal(mat64.matmul(_orthonormal(y.to(torch.float64))))  # the float64 step
    tail_rhs = None
    if rhs is None:
        aq = mat64.matmul(q)
    else:
        rhs = rhs.to(torch.float64)
        both = mat64.matmul(torch.cat([q, rhs - q @ (q.transpose(-1, -2) @ rhs)], -1))
        aq, tail_rhs = both[..., :q.shape[-1]], both[..., q.shape[-1]:]
    t = q.transpose(-1, -2) @ aq
    t = (t + t.transpose(-1, -2)) / 2
    w = newton_series(t, alpha, num_iters)
    w = (w + w.transpose(-1, -2)) / 2
    ft = t @ w
    ft = (ft + ft.transpose(-1, -2)) / 2
    r = aq - q @ t

    lam_star = (math.ldexp(1.0, num_iters) * alpha[..., 0, 0]).rsqrt()
    norm = torch.linalg.matrix_norm
    if q.shape[-1] < mat.shape[-1]:
        if mat_norm_sq is None:
            mat_norm_sq = mat64.row_sums_and_norms_sq()[1].sum(-1)
        tail = _tail(mat_norm_sq, aq, q) / lam_star
    else:
        tail = torch.zeros_like(lam_star)  # Q spans everything
    resid = norm(r) / lam_star
    eye = torch.eye(t.shape[-1], dtype=t.dtype, device=t.device)
    coupling = norm(r @ (w - math.ldexp(1.0, num_iters) * alpha * eye)) * lam_star  # |R (f[T, 0] - c)| / sqrt(c)
    err = (tail.pow(3) / 2 + 2 * (coupling + resid * tail.square()) + coupling * resid) / _F_PEAK
    return q, ft, w, r, err, tail_rhs


def eigh_factors(mat64: Tensor, alpha: Tensor, num_iters: int) -> tuple[Tensor, Tensor]:
    """``(U, f)`` with the exact ``P = U diag(f) U^T`` of symmetric ``mat64 (..., m, m)`` (float64) with start
    ``alpha (..., 1, 1)``, through ``torch.linalg.eigh``; ``f`` is NaN for a non-finite matrix (which ``eigh`` never
    sees: it would raise for the whole batch)."""
    finite = torch.isfinite(mat64).all(-1).all(-1)[..., None]
    eye = torch.eye(mat64.shape[-1], dtype=mat64.dtype, device=mat64.device)
    eigvals, eigvecs = torch.linalg.eigh(torch.where(finite[..., None], mat64, eye))
    filt = landmark_solvers.newton_filter(eigvals, alpha[..., 0], num_iters)
    return eigvecs, torch.where(finite, filt, math.nan)


def newton_lowrank_factors(mat: Tensor, mat64: Tensor | Float64Matrix, num_iters: int, rank: int = LOWRANK_RANK,
                           power_iters: int = LOWRANK_POWER_ITERS, tolerance: float = LOWRANK_TOLERANCE,
                           rhs: Tensor | None = None) -> LowrankFactors:
    """The factors of ``newton_pinv(mat, num_iters)`` for symmetric non-negative ``mat (..., m, m)`` (``mat64``: the
    same in float64): low-rank where certified, the eigendecomposition for the others (among them every non-finite
    matrix, whose ``P`` is NaN). ``alpha`` is the published start of the whole ``mat``
    (:func:`mmsoft.ops.reference.newton_alpha`). Eagerly one host read of the certificate; none under
    ``torch.compile`` (``torch.cond``). ``rhs (..., m, c)``: the factors also carry ``Ah Pi rhs`` (``tail_rhs``), so
    that :func:`apply_lowrank_factors` on that ``rhs`` makes no further pass over ``Ah``."""
    with torch.profiler.record_function(reference.LANDMARK_SOLVE_RANGE):
        mat64 = as_float64(mat64)
        row_sums, row_norms_sq = mat64.row_sums_and_norms_sq()
        # colsum(Ah Ah) = Ah (row sums of Ah): Ah is symmetric
        alpha = reference.newton_alpha_from_sums(row_sums, row_norms_sq, mat64.matmul(row_sums.unsqueeze(-1))[..., 0])
        c = math.ldexp(1.0, num_iters) * alpha
        iterate = subspace_iteration(mat, rank, power_iters)
        mat_norm_sq = row_norms_sq.sum(-1)
        eager = not torch.compiler.is_compiling() and mat.device.type != "meta"
        if eager and iterate[0].shape[-1] < mat.shape[-1] and mat.shape[:-2].numel() > 0:
            # A flat spectrum shows already in the float32 iterate: skip the float64 steps when no matrix can pass.
            early = _tail(mat_norm_sq, iterate[1], iterate[0]) * c[..., 0, 0].sqrt()
            if not (early <= LOWRANK_EARLY_REJECT).any():
                eigvecs, filt = eigh_factors(mat64.whole(), alpha, num_iters)
                every = torch.ones_like(early, dtype=torch.bool)
                return LowrankFactors(None, None, None, None, c, every, eigvecs, filt)
        q, ft, w, r, err, tail_rhs = lowrank_factors(mat, mat64, alpha, num_iters, rank, power_iters, iterate,
                                                     mat_norm_sq, rhs)
        exact = ~(err <= tolerance)  # NaN estimates (non-finite input) fail too
        eigvecs = filt = None
        if torch.compiler.is_compiling():
            def all_exact(mat64: Tensor, alpha: Tensor, exact: Tensor) -> tuple[Tensor, Tensor]:
                vecs, f = eigh_factors(mat64, alpha, num_iters)
                return vecs.contiguous(), torch.where(exact[..., None], f, 0.0)  # eigh's U is column-major

            def none_exact(mat64: Tensor, alpha: Tensor, exact: Tensor) -> tuple[Tensor, Tensor]:
                return torch.zeros_like(mat64), mat64.new_zeros(mat64.shape[:-1])

            eigvecs, filt = torch.cond(exact.any(), all_exact, none_exact, (mat64.whole(), alpha, exact))
        elif mat.device.type != "meta" and exact.all():  # flat spectra: no gather / scatter copies of m x m matrices
            eigvecs, filt = eigh_factors(mat64.whole(), alpha, num_iters)
        elif mat.device.type != "meta" and exact.any():
            whole = mat64.whole()
            eigvecs, filt = torch.zeros_like(whole), whole.new_zeros(whole.shape[:-1])
            alpha_exact = alpha.expand(exact.shape + (1, 1))[exact]
            eigvecs[exact], filt[exact] = eigh_factors(whole[exact], alpha_exact, num_iters)
        return LowrankFactors(q, ft, w, r, c, exact, eigvecs, filt, tail_rhs)


def apply_lowrank_factors(mat64: Tensor | Float64Matrix, factors: LowrankFactors, x: Tensor) -> Tensor:
    """``P x`` (float64) for ``x (..., m, c)`` from :func:`newton_lowrank_factors` of ``mat64`` (built with
    ``rhs=x`` when ``factors.tail_rhs`` is set: it then stands for ``Ah Pi x``)."""
    x = x.to(torch.float64)
    if factors.q is None:  # every matrix took the eigendecomposition
        vecs = factors.eigvecs.to(torch.float64)
        return vecs @ (factors.filt.to(torch.float64).unsqueeze(-1) * (vecs.transpose(-1, -2) @ x))
    q, r = factors.q, factors.r
    qx, rx = q.transpose(-1, -2) @ x, r.transpose(-1, -2) @ x
    tail = as_float64(mat64).matmul(x - q @ qx) if factors.tail_rhs is None else factors.tail_rhs
    tail = tail - q @ (q.transpose(-1, -2) @ tail)
    out = q @ (factors.ft @ qx + factors.w @ rx) + r @ (factors.w @ qx) + factors.c * tail
    if factors.eigvecs is not None:
        vecs = factors.eigvecs.to(torch.float64)
        exact = vecs @ (factors.filt.to(torch.float64).unsqueeze(-1) * (vecs.transpose(-1, -2) @ x))
        out = torch.where(factors.exact[..., None, None], exact, out)
    return out


class NewtonLowrankApply(torch.autograd.Function):
    """``newton_pinv(mat) @ x`` through :func:`newton_lowrank_factors`, with the closed-form backward of
    ``'newton'``.

    Forward and backward apply ``P`` in float64. Saved for backward: the low-rank factors (``O(m s)``) and, where the
    eigendecomposition was taken, its eigenvectors in ``x``'s dtype (the ``m x m`` memory of ``'newton'``'s saved
    inverse); ``mat`` itself is kept by autograd anyway. Double backward applies ``P`` through this Function again, so
    second derivatives are those of ``'newton'``.
    """

    @staticmethod
    def forward(ctx, mat: Tensor, x: Tensor, num_iters: int) -> Tensor:  # type: ignore[override]
        mat64 = Float64Matrix(mat)
        # the module's settings at call time (tests and experiments change them)
        factors = newton_lowrank_factors(mat, mat64, num_iters, LOWRANK_RANK, LOWRANK_POWER_ITERS, LOWRANK_TOLERANCE,
                                         rhs=x)
        out = apply_lowrank_factors(mat64, factors, x).to(x.dtype)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            ctx.has_eigh = factors.eigvecs is not None
            eigh = (factors.eigvecs.to(x.dtype), factors.filt) if ctx.has_eigh else ()
            ctx.save_for_backward(mat, out, *factors[:6], *eigh)  # q, ft, w, r, c, exact
        ctx.num_iters = num_iters
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        mat, out, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: P g must stay differentiable in mat
            p_grad = NewtonLowrankApply.apply(mat, grad, ctx.num_iters)
        else:  # P is symmetric: P^T g = P g
            factors = LowrankFactors(*saved) if ctx.has_eigh else LowrankFactors(*saved, None, None)
            p_grad = apply_lowrank_factors(Float64Matrix(mat), factors, grad).to(grad.dtype)
        return reference.pinv_apply_backward(p_grad, out), p_grad, None


def newton_lowrank_apply(mat: Tensor, x: Tensor, num_iters: int) -> Tensor:
    """``newton_pinv(mat, num_iters) @ x`` for the landmark kernel ``mat (..., m, m)`` and ``x (..., m, c)`` (same
    dtype: float32 or float64), by the low-rank evaluation with exact fallback; differentiable (closed form)."""
    return NewtonLowrankApply.apply(mat, x, num_iters)
