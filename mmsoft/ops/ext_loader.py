"""Loads the compiled extension ``mmsoft._ext`` (if it was built), reports what it contains and decides, in
:func:`ext_unsupported`, whether it can run given tensors."""
from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import torch

logger = logging.getLogger("mmsoft")

BUILD_HINT = ("build it from the mmsoft checkout with `MAX_JOBS=2 python setup.py build_ext --inplace` "
              "(or `pip install --no-build-isolation -e .`); a CUDA build needs a CUDA torch and nvcc")


def _load() -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module("mmsoft._ext"), None
    except ImportError as exc:  # not built, or built against another torch
        return None, f"{type(exc).__name__}: {exc}"


_ext, _load_error = _load()
_build_info: dict[str, Any] = dict(_ext.build_info()) if _ext is not None else {}
#: Device types the extension was built for, e.g. ``frozenset({'cpu'})`` or ``frozenset({'cpu', 'cuda'})``.
EXT_BACKENDS: frozenset[str] = frozenset(_build_info.get("backends", ()))
#: Largest head / value dim the CUDA kernels accept, as the CUDA build reports it (``kMaxChannels`` in
#: ``mmsoft/csrc/cuda/soft_attention_cuda.h``); None without a CUDA build, where no tensor reaches those kernels.
CUDA_MAX_CHANNELS: int | None = _build_info.get("cuda_max_channels")


def ext_available(device_type: str) -> bool:
    """Whether ``mmsoft._ext`` was built with kernels for ``device_type`` ('cpu' or 'cuda')."""
    return device_type in EXT_BACKENDS


def ext_unsupported(device_type: str, dtypes: Iterable[torch.dtype] = (), channels: int = 0) -> str | None:
    """Why the fused kernels cannot run tensors on ``device_type`` of ``dtypes`` with head / value dims up to
    ``channels``; None when they can. The one place that decides it (``soft_attention``'s backend choice and
    :func:`get_ext` ask here; the C++ checks of ``mmsoft._ext`` only guard direct calls).

    ``'meta'`` tensors always can: the custom ops' fake kernels propagate shapes and dtypes, built or not.
    """
    if device_type == "meta":
        return None
    if device_type not in EXT_BACKENDS:
        built = sorted(EXT_BACKENDS)
        return (f"mmsoft._ext was not built for '{device_type}' tensors (built: {built})" if built
                else "mmsoft._ext is not built")
    if device_type == "cuda":
        if torch.float64 in tuple(dtypes):
            return "the CUDA kernels do not support float64 (float64 runs on the CPU extension)"
        if CUDA_MAX_CHANNELS is not None and channels > CUDA_MAX_CHANNELS:
            return f"the CUDA kernels support head / value dims up to {CUDA_MAX_CHANNELS}"
    return None


def get_ext(device_type: str | None = None) -> ModuleType:
    """The extension module; raises ``RuntimeError`` saying how to build it when it (or ``device_type``'s kernels,
    see :func:`ext_unsupported`) is missing."""
    if _ext is None:
        raise RuntimeError(f"mmsoft._ext is not available ({_load_error}); {BUILD_HINT}")
    reason = None if device_type is None else ext_unsupported(device_type)
    if reason is not None:
        raise RuntimeError(f"{reason}; {BUILD_HINT}, or pass impl='reference'")
    return _ext


def info(verbose: bool = True) -> dict[str, Any]:
    """What was built: ``built``, ``backends``, ``cuda_archs``, the torch / CUDA versions it was built against,
    the running torch version and, when the import failed, the ``error``. Printed unless ``verbose=False``."""
    archs = _build_info.get("cuda_archs", "")
    result: dict[str, Any] = {
        "built": _ext is not None,
        "backends": sorted(EXT_BACKENDS),
        "cuda_archs": [a for a in archs.split(";") if a],
        "built_with_torch": _build_info.get("torch_version"),
        "built_with_cuda": _build_info.get("cuda_version") or None,
        "runtime_torch": torch.__version__,
        "path": getattr(_ext, "__file__", None),
    }
    if _load_error is not None:
        result["error"] = _load_error
    if verbose:
        print("mmsoft._ext: " + ", ".join(f"{k}={v}" for k, v in result.items()))
    return result
