"""Precision rules of the attention core, each decided here once.

* :func:`acc_dtype`: the accumulation dtype. The landmark-side math (the landmark kernel, its row sums, every
  landmark solver) runs in it, and the fused kernels of ``mmsoft._ext`` accumulate in it and take their
  landmark-sized operands in it. Its C++ counterpart is ``acc_type_of`` in ``mmsoft/csrc/soft_attention.h`` (the only
  mapping on that side), exported as ``mmsoft._ext.acc_dtype``; ``tests/ops/test_ext_kernels.py`` checks that the two
  agree for every supported dtype.
* :func:`exp_floor`: every Gaussian kernel entry is ``exp(max(arg, floor))``, the floor just above the log of the
  accumulation dtype's smallest normal number. Entries that would underflow become ``1.6e-38`` (float32) instead of a
  subnormal or zero; the CPU's vectorised ``exp`` is 12-31x slower on arguments below that log, and realistic
  activations put whole tiles of the ``N x m`` kernel there. Its C++ counterpart is ``mmsoft/csrc/exp_floor.h``,
  exported as ``mmsoft._ext.exp_floor`` and checked against this one by ``tests/ops/test_ext_kernels.py``.
* :func:`autocast_disabled`: that math runs with autocast off, also inside an autocast region (``exp`` of large
  negative arguments underflows in float16 and makes the landmark kernel singular).
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for inputs of ``dtype``: float64 stays float64; float32, float16 and bfloat16 accumulate
    in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def exp_floor(dtype: torch.dtype) -> float:
    """Floor of the Gaussian kernels' exponent arguments for inputs of ``dtype``: the smallest integer above
    ``log`` of the smallest normal number of :func:`acc_dtype` ``(dtype)`` (float32 ``-87.0``, float64 ``-708.0``)."""
    return float(math.ceil(math.log(torch.finfo(acc_dtype(dtype)).tiny)))


def autocast_disabled(device_type: str) -> AbstractContextManager:
    """``torch.autocast(device_type, enabled=False)``, or no context for a device type without autocast (``'meta'``:
    shape propagation runs the same code)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()
