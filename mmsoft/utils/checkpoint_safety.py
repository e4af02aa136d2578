"""Let ``torch.load(weights_only=True)`` (the default since torch 2.6) read mmengine checkpoints.

mmengine's checkpoints hold, besides tensors, numpy arrays/scalars (in ``message_hub`` and
``meta``), its ``HistoryBuffer`` and ``ConfigDict``, and ``getattr(HistoryBuffer, 'min')``-style
references to the buffer's statistics methods. Rather than loading with ``weights_only=False``
(which runs arbitrary code from the file), we allowlist exactly those types. ``getattr`` is not
allowlisted: a guarded stand-in registered under its name resolves only HistoryBuffer's own
statistics methods and rejects everything else.
"""
from __future__ import annotations

import pickle

import numpy as np
import torch
from mmengine.config import ConfigDict
from mmengine.logging import HistoryBuffer

_NUMPY_SCALARS = ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                  "float16", "float32", "float64")


def _history_buffer_statistic(obj: object, name: str):
    """Stand-in for ``getattr`` in checkpoints: only ``HistoryBuffer.<statistics method>``."""
    if obj is HistoryBuffer and name in ("min", "max", "current", "mean", *HistoryBuffer._statistics_methods):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"checkpoint asks for getattr({obj!r}, {name!r}); mmsoft only allows "
                                 "HistoryBuffer statistics methods here")


def _numpy_reconstructors() -> list:
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    return [_reconstruct, scalar]


def mmengine_checkpoint_types() -> list:
    """Everything (besides tensors) that mmengine writes into a training checkpoint."""
    import codecs
    types: list = [np.ndarray, np.dtype, codecs.encode, ConfigDict, HistoryBuffer, *_numpy_reconstructors()]
    for name in _NUMPY_SCALARS:
        types += [getattr(np, name), type(np.dtype(name))]
    types.append((_history_buffer_statistic, "builtins.getattr"))
    return types


def allow_mmengine_checkpoint_types() -> None:
    """Allowlist the non-tensor types mmengine saves, so ``--resume`` works with weights_only=True."""
    torch.serialization.add_safe_globals(mmengine_checkpoint_types())
