"""Time spent inside named ``torch.profiler.record_function`` ranges, from one profiled run.

mmsoft marks each landmark solve (the Newton-Schulz iterations, the float64 eigendecomposition and filter, the
residual form applied to the right-hand side, the ridge Cholesky solve, the low-rank factors with their fallback
eigendecompositions) with the range ``mmsoft.ops.reference.LANDMARK_SOLVE_RANGE``. :func:`range_seconds` runs a
function under ``torch.profiler`` and adds up the ranges of one name: on the CPU their wall time on the host, on CUDA
the device time of the kernels they launched. A range inside another of the same name (one solver calling another) is
counted once, with its outermost range. :func:`solver_share` is what the benchmark tools report from it.
"""
from __future__ import annotations

from typing import Any, Callable


def outermost(events: list[Any], name: str) -> list[Any]:
    """The host-side profiler ``FunctionEvent`` s named ``name`` that have no ancestor of the same name (on CUDA the
    profiler also lists each range as a device-side annotation: left out, its kernels count in the host range's
    ``device_time_total``)."""
    from torch.autograd import DeviceType

    found = []
    for event in events:
        if event.name != name or event.device_type != DeviceType.CPU:
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name != name:
            parent = parent.cpu_parent
        if parent is None:
            found.append(event)
    return found


def range_seconds(fn: Callable[[], Any], name: str, cuda: bool = False) -> tuple[float, float]:
    """Run ``fn()`` once under ``torch.profiler``; ``(seconds of the run, seconds inside the ranges named name)``.

    CPU: the run's and the ranges' host wall time. CUDA: the run's host wall time including a final synchronisation,
    and the device time of the kernels launched inside the ranges (no synchronisation inside the run).
    """
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    ranges = outermost(list(prof.events()), name)
    if cuda:
        inside_us = sum(e.device_time_total for e in ranges)
    else:
        inside_us = sum(e.cpu_time_total for e in ranges)
    return wall, inside_us / 1e6


def solver_share(step: Callable[[], Any], cuda: bool) -> dict[str, Any]:
    """The landmark solves of one more, profiled run of ``step``: their seconds (``solver_s``), their share of the
    run's wall time (``solver_share``), that wall time (``solver_run_s``) and how it was measured."""
    from mmsoft.ops.reference import LANDMARK_SOLVE_RANGE  # lazily: the tools import mmsoft only in their workers

    wall, inside = range_seconds(step, LANDMARK_SOLVE_RANGE, cuda)
    return {"solver_s": inside, "solver_share": inside / wall if wall > 0 else 0.0, "solver_run_s": wall,
            "solver_method": f"torch.profiler range {LANDMARK_SOLVE_RANGE} ({'device' if cuda else 'CPU'} time)"}
