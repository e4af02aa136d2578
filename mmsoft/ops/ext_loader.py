"""Loads the compiled extension ``mmsoft._ext`` (if it was built) and reports what it contains."""
from __future__ import annotations

import importlib
import logging
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


def ext_available(device_type: str) -> bool:
    """Whether ``mmsoft._ext`` was built with kernels for ``device_type`` ('cpu' or 'cuda')."""
    return device_type in EXT_BACKENDS


def get_ext(device_type: str | None = None) -> ModuleType:
    """The extension module; raises ``RuntimeError`` saying how to build it when it (or ``device_type``) is missing."""
    if _ext is None:
        raise RuntimeError(f"mmsoft._ext is not available ({_load_error}); {BUILD_HINT}")
    if device_type is not None and device_type not in EXT_BACKENDS:
        raise RuntimeError(f"mmsoft._ext was built for {sorted(EXT_BACKENDS)} only, not for '{device_type}' "
                           f"tensors; {BUILD_HINT}, or pass impl='reference'")
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
