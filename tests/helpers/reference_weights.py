"""Seeded weights in the reference SOFT checkpoint layout (fudan-zvg/SOFT key names and shapes).

The golden equivalence test (``tests/test_reference_equivalence.py``) feeds the same weights to mmsoft that were fed
to the reference model when its stage maps were recorded (``tests/data/README.md``), so the generator must not change:
``GOLDEN_WEIGHT_CHECKSUMS`` in the golden file pins it.

Values are "realistic" rather than initial: linear / conv weights ``N(0, 1 / fan_in)`` (unit-gain activations, so the
landmark kernels are far from the all-ones matrix of a freshly initialised model), LayerNorm / BatchNorm scales
``1 + N(0, 0.1^2)`` (the landmark LayerNorm's ``LANDMARK_NORM_SCALE`` times that), biases and BN means
``N(0, 0.1^2)``, BN variances ``U(0.5, 1.5)``, position embeddings and the class token ``N(0, 0.02^2)`` as the
reference initialises them. numpy's PCG64 ``Generator`` gives the same stream on
every platform.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

#: Scale of the landmark LayerNorm (``Qnorm_act.0``). At 1 the 32-dim landmarks are ~8 apart and the landmark kernel
#: is nearly the identity, which no trained model has; at this scale it is ill-conditioned, most of its spectrum lies
#: below what 20 Newton-Schulz steps invert, and the start decides the function, as in trained models.
LANDMARK_NORM_SCALE = 0.25

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "data" / "soft_reference_params.json").read_text())


#: Layouts not in the fixture, derived from ``soft_norm_tiny``'s with other depths (same widths): mmsoft's SOFT-Small
#: (the published 24M model; the reference code's own ``small`` preset has 20 stage-3 blocks). Seeded weights of these
#: have no reference golden; the benchmarks use them as realistic weights.
DERIVED_DEPTHS = {"soft_norm_small": [1, 3, 7, 4]}


def reference_layout_with_depths(depths: list[int]) -> dict[str, list[int]]:
    """The soft_norm_tiny layout with ``depths[k]`` blocks in stage k (block templates: each stage's block 0)."""
    layout = FIXTURE["models"]["soft_norm_tiny"]["state_dict"]
    out = {k: v for k, v in layout.items() if not k.startswith("block")}
    for stage, depth in enumerate(depths, start=1):
        template = {k[len(f"block{stage}.0."):]: v for k, v in layout.items() if k.startswith(f"block{stage}.0.")}
        out.update({f"block{stage}.{j}.{k}": v for j in range(depth) for k, v in template.items()})
    return out


def reference_layout(model: str) -> dict[str, list[int]]:
    """Names and shapes of the reference model's state dict. Plain ``soft_*`` models share the ``soft_norm_*``
    layout (the symmetric normalisation adds no parameter); :data:`DERIVED_DEPTHS` models are derived."""
    name = model if model in FIXTURE["models"] or model in DERIVED_DEPTHS else model.replace("soft_", "soft_norm_", 1)
    if name in DERIVED_DEPTHS:
        return reference_layout_with_depths(DERIVED_DEPTHS[name])
    return FIXTURE["models"][name]["state_dict"]


def seeded_reference_state_dict(model: str, seed: int, dtype: torch.dtype = torch.float64) -> OrderedDict:
    """Seeded tensors with the reference model's names and shapes (see the module docstring)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = OrderedDict()
    for name, shape in reference_layout(model).items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(1000, dtype=torch.int64).reshape(shape)
            continue
        if name.startswith(("pos_embed", "cls_token")):
            value = 0.02 * rng.standard_normal(shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("running_mean", ".bias")):
            value = 0.1 * rng.standard_normal(shape)
        elif name.endswith("Qnorm_act.0.weight"):  # the landmark LayerNorm: trained models keep landmarks close
            value = LANDMARK_NORM_SCALE * (1.0 + 0.1 * rng.standard_normal(shape))
        elif len(shape) == 1:  # LayerNorm / BatchNorm scale
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
        out[name] = torch.from_numpy(np.asarray(value, dtype=np.float64)).to(dtype)
    return out


def state_dict_checksum(state: dict[str, torch.Tensor]) -> float:
    """Sum of |values| over all floating tensors, in float64: pins the generator's output."""
    return float(sum(v.double().abs().sum() for v in state.values() if v.is_floating_point()))
