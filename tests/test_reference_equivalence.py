"""Golden equivalence with the reference SOFT models: same weights, same network.

``data/soft_reference_goldens.npz`` holds the stage maps that the reference code (fudan-zvg/SOFT, run on the CPU in
float64, batch 1, 224x224) computed for seeded weights (``helpers/reference_weights.py``) on a noise image and a
photograph; ``data/README.md`` says how they were made. mmsoft, given the same weights through the converter or
through ``init_cfg=dict(type='Pretrained')``, must reproduce every stage map.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.reference_weights import seeded_reference_state_dict, state_dict_checksum

from mmsoft.models import SOFT
from mmsoft.models.backbones.soft_converter import soft_convert
from mmsoft.ops import ext_loader, reference

GOLDENS = np.load(Path(__file__).parent / "data" / "soft_reference_goldens.npz")
# reference model -> (mmsoft arch, sym_norm)
MODELS = {"soft_norm_tiny": ("tiny", True), "soft_tiny": ("tiny", False), "soft_norm_medium": ("medium", True)}
IMAGES = ("noise", "photo")
SEED = 0
MEAN = torch.tensor([123.675, 116.28, 103.53], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375], dtype=torch.float64).view(1, 3, 1, 1)


def golden_input(image: str, dtype: torch.dtype) -> torch.Tensor:
    """The recorded 224x224 RGB image, ImageNet-normalised: ``(1, 3, 224, 224)``."""
    x = torch.from_numpy(GOLDENS[f"image/{image}"]).permute(2, 0, 1)[None].double()
    return ((x - MEAN) / STD).to(dtype)


def golden_maps(model: str, image: str) -> list[torch.Tensor]:
    """The reference's four stage maps (stages 1-2 stored at every second position)."""
    return [torch.from_numpy(GOLDENS[f"{model}/{image}/stage{i}"]).double() for i in range(4)]


def stage_errors(backbone: SOFT, model: str, dtype: torch.dtype) -> list[float]:
    """max |mmsoft - reference| / max |reference| per stage, worst over both images."""
    backbone = backbone.to(dtype).eval()
    worst = [0.0] * 4
    for image in IMAGES:
        with torch.no_grad():
            outs = backbone(golden_input(image, dtype))
        for i, (ours, ref) in enumerate(zip(outs, golden_maps(model, image))):
            ours = ours.double()[:, :, ::2, ::2] if i < 2 else ours.double()
            assert ours.shape == ref.shape, (i, ours.shape, ref.shape)
            worst[i] = max(worst[i], ((ours - ref).abs().max() / ref.abs().max()).item())
    return worst


def build(model: str, **kwargs) -> SOFT:
    arch, sym_norm = MODELS[model]
    return SOFT(arch=arch, sym_norm=sym_norm, with_cls_token=True, drop_path_rate=0.0, **kwargs)


@pytest.fixture(scope="module", params=list(MODELS))
def weights(request) -> tuple[str, dict]:
    state = seeded_reference_state_dict(request.param, SEED)
    # The goldens were recorded with exactly these weights: a changed generator must fail here, not below.
    assert state_dict_checksum(state) == pytest.approx(float(GOLDENS[f"{request.param}/checksum"]), rel=1e-12)
    return request.param, state


@pytest.mark.parametrize("impl", ["reference", "ext"])
def test_converter_reproduces_reference_stage_maps(weights, impl):
    model, state = weights
    if impl == "ext" and not ext_loader.ext_available("cpu"):
        pytest.skip("mmsoft._ext is not built for the CPU")
    backbone = build(model, attn_impl=impl)
    backbone.load_state_dict(soft_convert(state), strict=True)
    errors = stage_errors(backbone, model, torch.float64)
    assert max(errors) < 1e-4, errors


def test_init_cfg_pretrained_reproduces_reference_stage_maps(weights, tmp_path):
    model, state = weights
    path = tmp_path / f"{model}.pth"
    torch.save({"state_dict_ema": state, "epoch": 299}, path)
    backbone = build(model, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()
    errors64 = stage_errors(backbone, model, torch.float64)
    assert max(errors64) < 1e-4, errors64
    errors32 = stage_errors(backbone, model, torch.float32)
    print(f"{model}: float64 {[f'{e:.1e}' for e in errors64]}, float32 {[f'{e:.1e}' for e in errors32]}")
    assert max(errors32) < 1e-3, errors32


@pytest.mark.parametrize("solver", ["newton", "newton_eigh", "newton_thin", "newton_lowrank"])
def test_faithful_solvers_reproduce_reference_stage_maps(solver):
    """Every faithful solver, named explicitly (the default 'auto' is 'newton_lowrank' on the CPU)."""
    state = seeded_reference_state_dict("soft_norm_tiny", SEED)
    backbone = build("soft_norm_tiny", landmark_solver=solver)
    backbone.load_state_dict(soft_convert(state), strict=True)
    errors = stage_errors(backbone, "soft_norm_tiny", torch.float64)
    assert max(errors) < 1e-4, errors


def test_goldens_discriminate_the_newton_start(monkeypatch):
    """The goldens can tell start rules apart: a per-matrix 1 / max_row_sum^2 start (mmsoft before it followed the
    reference) misses them by far, and so does dropping the stage-4 class token."""
    state = seeded_reference_state_dict("soft_norm_tiny", SEED)
    no_cls = SOFT(arch="tiny", with_cls_token=False, drop_path_rate=0.0)
    no_cls.load_state_dict(soft_convert(state, with_cls_token=False), strict=True)
    errors = stage_errors(no_cls, "soft_norm_tiny", torch.float64)
    assert max(errors[:3]) < 1e-4 and errors[3] > 1e-3, errors

    def per_matrix_alpha(mat):
        return mat.sum(-1).amax(-1).pow(-2)[..., None, None]

    monkeypatch.setattr(reference, "newton_alpha", per_matrix_alpha)
    backbone = build("soft_norm_tiny", landmark_solver="newton")  # the literal iterations, which read newton_alpha
    backbone.load_state_dict(soft_convert(state), strict=True)
    errors = stage_errors(backbone, "soft_norm_tiny", torch.float64)
    assert min(errors) > 1e-2, errors
