"""The public entry of the SOFT attention core: :func:`soft_attention`, its argument checks and its backend choice.

``out = A . (P . (A^T V))`` with ``A = exp(-|q_i - k_j|^2 / 2)`` (queries vs landmarks),
``P = pinv(Ah)`` of the landmark kernel ``Ah = exp(-|k_i - k_j|^2 / 2)`` by Newton-Schulz, and for
SOFT-Norm ``P <- D^-1/2 P D^-1/2`` with ``D = diag(row sums of Ah)``. Evaluated right to left, so no
``N x m x m`` product is ever formed. The landmark-side math (``Ah``, row sums, Newton) always runs
in float32, also under autocast: ``exp`` of large negative arguments underflows in fp16 and makes
``Ah`` singular.

Backends (``impl``): ``'ext'`` runs the fused kernels of ``mmsoft._ext`` (A recomputed tile by tile, never stored:
O(N d + m^2) memory per head), ``'reference'`` the PyTorch reference (materialises the N x m matrix A), and
``'auto'`` the extension when it was built for the tensors' device (and supports their dtype / head dim, decided by
:func:`mmsoft.ops.ext_loader.ext_unsupported`), else the reference, with a one-time log line. The landmark side
(:mod:`mmsoft.ops.landmark_solvers`) is the same in both backends.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from . import ext_loader, landmark_solvers, reference
from .ext_products import ext_products
from .precision import acc_dtype, autocast_disabled

#: Backends accepted by ``soft_attention(..., impl=...)`` and the backbone's ``attn_impl``.
IMPLS = ("auto", "ext", "reference")
_fallbacks_logged: set[str] = set()


def check_impl(impl: str) -> None:
    """Raise ``ValueError`` unless ``impl`` is one of :data:`IMPLS`."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def _check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(
            "soft_attention expects q (..., N, d), k (..., m, d), v (..., N, c) with the same number of "
            f"dims; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[:-2] != k.shape[:-2] or q.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"batch dims differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the channel dim d; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[-2] != v.shape[-2]:
        raise ValueError(f"q and v must have the same number of tokens N; got q {tuple(q.shape)}, "
                         f"v {tuple(v.shape)}")
    if k.shape[-2] < 1:
        raise ValueError("soft_attention needs at least one landmark (m >= 1)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"all inputs must be on one device; q is on {q.device}, {name} on {t.device}")


def _emit_log(msg: str) -> None:
    try:
        from mmengine.logging import print_log
    except ImportError:
        logging.getLogger("mmsoft").warning(msg)
    else:
        print_log(msg, logger="current", level=logging.WARNING)


def _log_fallback_once(reason: str) -> None:
    if reason in _fallbacks_logged:
        return
    _fallbacks_logged.add(reason)
    _emit_log(f"mmsoft soft_attention(impl='auto'): {reason}; using the PyTorch reference. To build the "
              f"extension, {ext_loader.BUILD_HINT}.")


def resolve_impl(impl: str, q: Tensor, k: Tensor, v: Tensor) -> str:
    """The backend (``'ext'`` or ``'reference'``) that ``soft_attention(..., impl=impl)`` runs for these inputs.

    Raises ``ValueError`` for an unknown ``impl``; ``'ext'`` raises ``RuntimeError`` (saying how to build) when the
    extension cannot run them.
    """
    check_impl(impl)
    return _choose_backend(impl, q, k, v)


def _choose_backend(impl: str, q: Tensor, k: Tensor, v: Tensor) -> str:
    if impl == "reference":
        return "reference"
    reason = ext_loader.ext_unsupported(q.device.type, (q.dtype, k.dtype, v.dtype), max(q.shape[-1], v.shape[-1]))
    if reason is None:
        return "ext"
    if impl == "ext":
        raise RuntimeError(f"soft_attention(impl='ext'): {reason}. To build it, {ext_loader.BUILD_HINT}; "
                           "or pass impl='reference' / 'auto'.")
    if not torch.compiler.is_compiling():  # logging would break the graph; the eager run has logged already
        _log_fallback_once(reason)
    return "reference"


def _products_reference(q: Tensor, k: Tensor, v: Tensor, apply_p: landmark_solvers.Operator) -> Tensor:
    work = acc_dtype(k.dtype)
    qf, kf, vf = q.to(work), k.to(work), v.to(work)
    context = apply_p(reference.kernel_t_matmul(qf, kf, vf))
    return reference.kernel_matmul(qf, kf, context)


def soft_attention(q: Tensor, k: Tensor, v: Tensor, sym_norm: bool = True, num_iters: int = 20,
                   impl: str = "auto", solver: str = "newton", landmark_mask: Tensor | None = None) -> Tensor:
    """SOFT attention ``A . (P . (A^T v))`` for queries ``q (..., N, d)``, landmarks ``k (..., m, d)``
    and values ``v (..., N, c)`` (floating, one device; the first dim indexes images); returns ``(..., N, c)`` in
    ``v``'s dtype.

    ``q`` is used as given (the caller applies the ``d^-1/4`` scale). ``impl`` selects the backend (:data:`IMPLS`):
    ``'auto'`` (extension when it can run the inputs, else reference), ``'ext'`` or ``'reference'``.
    ``solver`` evaluates ``P . (A^T v)``: a key of :data:`mmsoft.ops.landmark_solvers.SOLVERS` (``'newton'``, the
    published computation, by default) or ``'auto'`` (by device, :func:`mmsoft.ops.landmark_solvers.resolve_solver`,
    the backbone's default); ``num_iters`` is its Newton-Schulz step count.
    ``landmark_mask`` (bool, broadcastable to ``k.shape[:-1]``; None = all landmarks): False landmarks take no part,
    their rows and columns of ``P`` are zero (see :func:`~mmsoft.ops.landmark_solvers.landmark_operator`). Tokens to
    leave out of ``A^T v`` need zero rows in ``v``.

    Raises ``ValueError`` / ``TypeError`` for arguments or shapes that do not fit (each checked here, once), and
    ``RuntimeError`` for ``impl='ext'`` when the extension cannot run the inputs.
    """
    check_impl(impl)
    landmark_solvers.check_solver(solver)
    landmark_solvers.check_num_iters(num_iters)
    _check_inputs(q, k, v)
    solver = landmark_solvers.resolve_solver(solver, q.device.type)
    backend = _choose_backend(impl, q, k, v)

    def make_operator(landmarks: Tensor) -> landmark_solvers.Operator:
        return landmark_solvers.build_operator(landmarks, sym_norm, num_iters, solver, landmark_mask)

    with autocast_disabled(q.device.type):
        if backend == "ext":
            out = ext_products(q, k, v, make_operator)
        else:
            out = _products_reference(q, k, v, make_operator(k))
    return out.to(v.dtype)


def _refuse_torchscript() -> None:
    raise RuntimeError(
        "mmsoft.ops.soft_attention cannot be compiled with torch.jit.script: TorchScript is deprecated in this torch "
        "and does not support the op's Python-level dispatch (backends, landmark solvers, autograd Functions). Use "
        "torch.compile instead, which traces it without graph breaks (also with fullgraph=True), or call it eagerly.")


# torch.jit.script(fn) calls fn.__prepare_scriptable__() first: refuse with the alternative instead of failing deep
# inside the TorchScript frontend on the first Python construct it does not know.
soft_attention.__prepare_scriptable__ = _refuse_torchscript  # type: ignore[attr-defined]
