"""Helpers shared by the attention-core tests: the input maker, the error measure and the per-dtype tolerances.

Import as ``from utils import ...`` (``tests/ops`` is on ``sys.path`` under pytest's rootdir-relative imports, as
for ``conftest``); ``conftest.py`` keeps only fixtures.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmsoft.ops.landmark_solvers import landmark_operator

#: Max |ext - float64 reference| relative to max |reference|, per input dtype. The kernels accumulate in fp32 (fp64
#: for fp64 inputs), so the error is the final rounding to the input dtype plus fp32 accumulation noise.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def rel_err(got: Tensor, ref: Tensor) -> float:
    """``max |got - ref| / max |ref|``, computed in float64 on the CPU (``ref`` all zero: the absolute error)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def make_inputs(batch: int = 2, heads: int | None = 2, n: int = 40, m: int = 10, d: int = 8, c: int | None = None,
                *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0,
                q_scale: float | None = None, k_scale: float = 0.6) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded attention inputs ``q (batch, heads, n, d)``, ``k (batch, heads, m, d)``, ``v (batch, heads, n, c)``
    (``heads=None``: 3-D, without the heads dim; ``c`` defaults to ``d``).

    Drawn standard normal in float64 from one generator (q, then k, then v), scaled, then cast to ``dtype`` on
    ``device``: ``q`` by ``q_scale`` (default ``d^-1/4``, the scale ``SOFTAttention`` gives its queries), ``k`` by
    ``k_scale`` (0.6: landmarks as close as a layer makes them, an ill-conditioned kernel).
    """
    c = d if c is None else c
    lead = (batch,) if heads is None else (batch, heads)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*lead, n, d, generator=gen, dtype=torch.float64) * (d ** -0.25 if q_scale is None else q_scale)
    k = torch.randn(*lead, m, d, generator=gen, dtype=torch.float64) * k_scale
    v = torch.randn(*lead, n, c, generator=gen, dtype=torch.float64)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def landmark_solve(k: Tensor, x: Tensor, **kwargs) -> Tensor:
    """``P x`` for landmarks ``k (..., m, d)`` and ``x (..., m, c)``: ``landmark_operator(k, **kwargs)(x)``."""
    return landmark_operator(k, **kwargs)(x)
