"""Pure-PyTorch reference of the SOFT attention core.

Every function here is the ground truth that the compiled kernels (``mmsoft._ext``) are tested
against. Shapes follow ``(..., rows, channels)``: queries ``q (..., N, d)``, landmarks
``k (..., m, d)``, values ``v (..., N, c)``. All functions accept any leading batch dims.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .precision import exp_floor


def landmark_centre(y: Tensor) -> Tensor:
    """The mean of the rows of ``y (..., m, d)``, shape ``(..., 1, d)``, detached from autograd.

    Shifting queries and landmarks by one vector leaves every distance ``|q_i - k_j|`` unchanged, so subtracting this
    centre from both changes no value and no derivative (of any order: the functions agree for every shift, so the
    shift needs no gradient). What it changes is the rounding of the expanded distance below.
    """
    return y.detach().mean(-2, keepdim=True)


def gaussian_kernel(x: Tensor, y: Tensor) -> Tensor:
    """Return ``exp(-||x_i - y_j||^2 / 2)`` for every row pair, shape ``(..., N, m)``.

    The exponent is expanded as ``x.y - |x|^2 / 2 - |y|^2 / 2``: one GEMM whose output buffer then takes both norms,
    the clamp to ``[floor, 0]`` and the ``exp`` in place (one ``N x m`` buffer instead of one per term: a landmark
    kernel of 10 heads x 1,050^2, forward + backward, 0.30 -> 0.21 s on one CPU thread). The upper clamp removes
    rounding that can make the exponent slightly positive for (near-)equal rows; the floor is
    :func:`mmsoft.ops.precision.exp_floor` (an entry below ``1.6e-38`` in float32 becomes that value: the CPU's
    ``exp`` is 12-31x slower under it), as in the fused kernels. The expansion loses ``eps (|x|^2 + |y|^2)`` to
    cancellation, so both sides are first centred on the mean of ``y``'s rows (:func:`landmark_centre`): the error
    then scales with the rows' spread around the landmarks, not with an offset they share (in fp32 at an offset of
    100: 1e-2 of the attention output before, 1e-7 after).
    """
    centre = landmark_centre(y)
    x, y = x - centre, y - centre
    exponent = x @ y.transpose(-1, -2)
    exponent.add_((x * x).sum(-1, keepdim=True), alpha=-0.5).add_((y * y).sum(-1).unsqueeze(-2), alpha=-0.5)
    return exponent.clamp_(exp_floor(exponent.dtype), 0.0).exp_()


def kernel_t_matmul(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``A^T v`` with ``A = gaussian_kernel(q, k)``: ``(..., m, c)``; materialises A (reference)."""
    return gaussian_kernel(q, k).transpose(-1, -2) @ v


def kernel_matmul(q: Tensor, k: Tensor, w: Tensor) -> Tensor:
    """``A w`` with ``A = gaussian_kernel(q, k)``: ``(..., N, c)``; materialises A (reference)."""
    return gaussian_kernel(q, k) @ w


#: Newton-Schulz start of the published SOFT models: ``alpha = NEWTON_ALPHA_SCALE / r^2`` (``r`` the largest row sum),
#: halved while the start residual is too large (see :func:`newton_alpha`).
NEWTON_ALPHA_SCALE = 2.0
#: The halving stops once the largest column sum of ``|I - alpha mat^2|`` is at most this ...
NEWTON_RESIDUAL_BOUND = 1.01
#: ... or after this many halvings.
NEWTON_MAX_HALVINGS = 10


def newton_alpha(mat: Tensor) -> Tensor:
    """Newton-Schulz start scale of the published SOFT models, shape ``(..., 1, 1)`` (``mat``'s dtype).

    The reference code (``newton_inv`` of the SOFT attention, fudan-zvg/SOFT: the -Norm attention, and the plain
    attention of the November 2021 checkpoints) starts from ``V0 = alpha mat`` with ``alpha = 2 / r^2``, ``r`` the
    largest row sum of ``mat``, then halves ``alpha`` while the largest column sum of ``|I - alpha mat mat|`` exceeds
    1.01, at most 10 times. Twenty steps do not converge on real kernels, so this start decides which eigenvalues
    are inverted: any other start is a different network.

    Grouping: the reference takes ``r`` and the halving test over its whole ``(batch, heads)`` tensor, which makes an
    image's result depend on its batch mates. Here they are taken over each index of the first dim, i.e. over the
    heads of one image for ``mat (B, heads, m, m)``, and per matrix for ``(B, m, m)``: identical to the reference at
    batch size 1, independent of batch mates.

    No host synchronisation: for a matrix with non-negative entries (a Gaussian kernel) every off-diagonal entry of
    ``S = mat mat`` is non-negative, so column ``j`` of ``|I - alpha S|`` sums to
    ``|1 - alpha S_jj| + alpha (colsum(S)_j - S_jj)``; ``diag(S)`` and ``colsum(S)`` cost ``O(m^2)``, and all 11
    candidate alphas are judged at once. ``mat`` must be symmetric (the landmark kernel is): ``S_jj`` is then the
    squared norm of row ``j``, one contiguous pass (the literal ``sum_i mat_ji mat_ij`` reads ``mat`` transposed, which
    took a second per stage-3 layer at 1536x2560; the two differ by rounding, like the reference's own fp32 GEMM).
    Traceable by ``torch.compile(fullgraph=True)``.
    """
    if mat.dim() < 2 or mat.shape[-1] != mat.shape[-2]:
        raise ValueError(f"newton_alpha expects square matrices (..., m, m), got shape {tuple(mat.shape)}")
    row_sums = mat.sum(-1)
    col_s = (mat.sum(-2).unsqueeze(-2) @ mat).squeeze(-2)
    return newton_alpha_from_sums(row_sums, torch.linalg.vector_norm(mat, dim=-1).square(), col_s)


def newton_alpha_from_sums(row_sums: Tensor, row_norms_sq: Tensor, col_s: Tensor) -> Tensor:
    """:func:`newton_alpha` from the three ``O(m^2)`` reductions of the symmetric ``mat (..., m, m)`` it reads, each
    ``(..., m)``: its row sums, squared row norms (``diag(mat mat)``) and ``colsum(mat mat)`` (``mat`` times its row
    sums), for callers that compute them in another way (blockwise in float64:
    :class:`mmsoft.ops.newton_lowrank.Float64Matrix`). Shape ``(..., 1, 1)``."""
    lead, m = row_sums.shape[:-1], row_sums.shape[-1]
    groups = lead[0] if lead else 1
    per_group = math.prod(lead[1:]) if lead else 1
    r = row_sums.reshape(groups, per_group * m).amax(-1).clamp_min(torch.finfo(row_sums.dtype).tiny)  # (G,)
    diag_s = row_norms_sq.reshape(groups, per_group, m)                                 # (G, R, m): S_jj
    col_s = col_s.reshape(groups, per_group, m)                                         # (G, R, m): colsum(S)_j
    halvings = torch.arange(NEWTON_MAX_HALVINGS + 1, dtype=row_sums.dtype, device=row_sums.device)
    candidates = NEWTON_ALPHA_SCALE / r.square()[:, None] * torch.exp2(-halvings)       # (G, K+1)
    a = candidates[:, :, None, None]                                                     # (G, K+1, 1, 1)
    col_sums = (1 - a * diag_s[:, None]).abs() + a * (col_s - diag_s)[:, None]           # (G, K+1, R, m)
    too_large = col_sums.flatten(2).amax(-1) > NEWTON_RESIDUAL_BOUND                     # (G, K+1)
    # The reference halves while the bound fails: the number of leading failures (at most K) picks the candidate.
    chosen = too_large[:, :NEWTON_MAX_HALVINGS].to(torch.int64).cumprod(-1).sum(-1)      # (G,)
    alpha = candidates.gather(1, chosen[:, None]).squeeze(1)                            # (G,)
    alpha = alpha.view(groups, *([1] * (len(lead) - 1))) if lead else alpha.view(())
    return alpha.expand(lead)[..., None, None]


#: Name of the ``torch.profiler.record_function`` range around every landmark solve (each solver's work, whatever
#: module it lives in), so that a profiler trace, and the benchmark tools, can tell the solve's share of a run.
LANDMARK_SOLVE_RANGE = "mmsoft::landmark_solve"


def newton_schulz_iterations(mat: Tensor, num_iters: int) -> Tensor:
    """Run Newton-Schulz ``V <- 2V - V mat V`` from ``V0 = alpha * mat``, without autograd.

    ``mat`` must have non-negative entries (a Gaussian kernel matrix); ``alpha`` is the published models' start,
    see :func:`newton_alpha` (shared by the matrices of one index of the first dim). Computed on the device without
    host synchronisation.
    """
    with torch.profiler.record_function(LANDMARK_SOLVE_RANGE):
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


def pinv_apply_backward(p_grad: Tensor, out: Tensor) -> Tensor:
    """The gradient of ``mat`` for ``out = P x`` with ``P`` the symmetric pseudo-inverse of ``mat`` (the closed form
    of :func:`pinv_backward` through the product): ``-(P g) (P x)^T = -p_grad out^T``, ``(..., m, m)`` from
    ``p_grad = P g`` and ``out`` ``(..., m, c)``. The thin factor is negated, not the ``m x m`` result (one pass
    fewer over it)."""
    return torch.neg(p_grad) @ out.transpose(-1, -2)
