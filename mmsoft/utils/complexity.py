"""Parameters and FLOPs of mmdet / mmseg models with SOFT backbones (the engine of tools/analysis/get_flops.py).

FLOPs are mmengine's: a jit trace counted by :class:`mmengine.analysis.FlopAnalyzer` (one multiply-add = one FLOP),
plus :func:`mmsoft.ops.flops.soft_flop_handles` for the ops the generic counter does not see. Tracing a SOFT model
at detection size runs the 20 Newton-Schulz iterations of every head and layer (about 80 m^3 FLOPs each, m ~ 1000
landmarks): minutes on a CPU. By default the trace therefore runs them with 0 iterations and the handle counts the
configured number (``exact_newton=True`` runs them; the counts are the same, see tests/test_flops.py).

Layers with the default ``landmark_solver='auto'`` are counted as ``'newton'``, the published computation: ``'auto'``
resolves by device (``'newton_lowrank'`` on the CPU, where the trace runs), which would make a model's count depend on
where it is counted and, through the certificate's fallbacks, on the input. A solver named in the config is counted as
configured.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from torch import nn

from mmsoft.models.layers import SOFTAttention
from mmsoft.ops.flops import soft_flop_handles
from mmsoft.ops.landmark_solvers import AUTO_SOLVER
from mmsoft.utils.channel_check import model_input_channels


def _soft_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The SOFT attention layers of ``model``: they own the Newton-Schulz iteration count."""
    return [m for m in model.modules() if isinstance(m, SOFTAttention)]


@contextlib.contextmanager
def newton_iterations_skipped(model: nn.Module) -> Iterator[int | None]:
    """Run ``model``'s SOFT attention layers with 0 Newton-Schulz iterations inside the block; yields the iteration
    count they were configured with (None, and nothing changed, when the layers disagree or there are none)."""
    modules = _soft_attention_modules(model)
    configured = {m.newton_iters for m in modules}
    if len(configured) != 1:
        yield None
        return
    (iters,) = configured
    for m in modules:
        m.newton_iters = 0
    try:
        yield iters
    finally:
        for m in modules:
            m.newton_iters = iters


@contextlib.contextmanager
def auto_solver_counted_as_newton(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s SOFT attention layers configured with ``landmark_solver='auto'`` with ``'newton'`` inside the
    block (see the module docstring), restoring ``'auto'`` after it."""
    modules = [m for m in _soft_attention_modules(model) if m.landmark_solver == AUTO_SOLVER]
    for m in modules:
        m.landmark_solver = "newton"
    try:
        yield
    finally:
        for m in modules:
            m.landmark_solver = AUTO_SOLVER


def count_flops(model: nn.Module, inputs: tuple, exact_newton: bool = False) -> FlopAnalyzer:
    """A finished :class:`FlopAnalyzer` of ``model(*inputs)`` with mmsoft's op handles (totals already computed)."""
    context = contextlib.nullcontext(None) if exact_newton else newton_iterations_skipped(model)
    with auto_solver_counted_as_newton(model), context as iters, torch.no_grad():
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.set_op_handle(**soft_flop_handles(newton_iters=iters))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analyzer.total()  # trace now, while the context is active; results are cached
    return analyzer


def _padded(shape: tuple[int, int], divisor: int) -> tuple[int, int]:
    return tuple(math.ceil(s / divisor) * divisor for s in shape)  # type: ignore[return-value]


def _tensor_mode_forward(model: nn.Module, scope: str, shape: tuple[int, int]) -> nn.Module:
    """``model`` as a module whose ``forward(images)`` runs the test-time network (``mode='tensor'``)."""
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape, scale_factor=(1.0, 1.0))
    if scope == "mmdet":
        from mmdet.structures import DetDataSample as Sample
    elif scope == "mmseg":
        from mmseg.structures import SegDataSample as Sample
    else:
        raise ValueError(f"FLOP counting supports mmdet and mmseg models, not default_scope={scope!r}")

    class TensorMode(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor):
            return self.model(images, [Sample(metainfo=meta)], mode="tensor")

    return TensorMode()


def model_complexity(model: nn.Module, scope: str, shape: tuple[int, int], exact_newton: bool = False,
                     pad_divisor: int = 32) -> dict:
    """Parameters and FLOPs of ``model`` (eval mode, batch 1, ``shape`` = (H, W) padded to ``pad_divisor``, as many
    input channels as the model takes: :func:`mmsoft.utils.channel_check.model_input_channels`).

    Returns ``flops``, ``params``, ``backbone_flops``, ``backbone_params``, ``input_shape`` (as traced: H, W),
    ``in_channels``, the per-op ``flops_by_operator`` and the ``analyzer`` itself (for mmengine's tables).
    """
    model.eval()
    input_shape = _padded(tuple(shape), pad_divisor)
    wrapper = _tensor_mode_forward(model, scope, input_shape)
    device = next(model.parameters()).device
    in_channels = model_input_channels(model)
    images = torch.randn(1, in_channels, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    analyzer = count_flops(wrapper, (images,), exact_newton=exact_newton)
    params = parameter_count(model)
    return dict(flops=analyzer.total(), params=params[""], backbone_flops=analyzer.total("model.backbone"),
                backbone_params=params.get("backbone", 0), input_shape=input_shape, in_channels=in_channels,
                flops_by_operator=dict(analyzer.by_operator()), analyzer=analyzer)
