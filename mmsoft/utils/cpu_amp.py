"""``--amp`` without a GPU: bfloat16 autocast on the CPU.

mmengine's ``AmpOptimWrapper`` refuses to start without a GPU / NPU / MLU, though ``torch.autocast`` runs on the CPU
in bfloat16 (mmengine's own :func:`mmengine.runner.amp.autocast` supports it). bfloat16 has float32's exponent range,
so unlike float16 it needs no loss scaling: this wrapper is mmengine's plain ``OptimWrapper`` (gradient clipping,
accumulation, parameter-wise settings unchanged) whose forward context autocasts to bfloat16 on the CPU.
``tools/train.py --amp`` picks it when no accelerator is available. Matrix products and the activations they save run
in bfloat16; speed depends on the CPU (on a shared 2-core Xeon with avx512_bf16 the demo RetinaNet trained ~2x slower
than in float32).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.runner.amp import autocast
from torch import nn

from mmsoft.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Mixed precision on the CPU: the model's forward (and loss) under ``torch.autocast('cpu', torch.bfloat16)``;
    parameters, gradients and optimizer state stay float32.

    Config: ``optim_wrapper=dict(type='mmsoft.CPUAmpOptimWrapper', optimizer=...)``; the other arguments are
    ``OptimWrapper``'s (``loss_scale`` is accepted and ignored, ``dtype`` must be bfloat16)."""

    def __init__(self, **kwargs) -> None:
        kwargs.pop("loss_scale", None)  # AmpOptimWrapper's argument: bfloat16 needs no loss scaling
        dtype = kwargs.pop("dtype", None)
        if dtype not in (None, "bfloat16", torch.bfloat16):
            raise ValueError(f"CPU autocast runs in bfloat16 only, got dtype={dtype!r}; drop dtype or use bfloat16")
        super().__init__(**kwargs)

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """OptimWrapper's context (gradient accumulation) plus bfloat16 CPU autocast."""
        with super().optim_context(model), autocast(device_type="cpu", dtype=torch.bfloat16):
            yield
