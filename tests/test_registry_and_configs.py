"""``mmsoft.SOFT`` builds from mmdet and mmseg registries and from the shipped configs."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope

from mmsoft.models import SOFT

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["mmdet", "mmseg"])
def scope(request):
    """Run the test inside an mmdet or an mmseg default scope, as their runners do."""
    name = request.param
    init_default_scope(name)
    yield name
    DefaultScope._instance_dict.pop(f"{name}-test", None)


def downstream_models(scope: str):
    if scope == "mmdet":
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS


def test_scoped_type_builds_from_downstream_registry(scope):
    model = downstream_models(scope).build(dict(type="mmsoft.SOFT", arch="tiny", out_indices=(3,)))
    assert type(model) is SOFT and model.out_indices == (3,)


def test_registered_only_in_mmsofts_child_registries(scope):
    """As mmpretrain: mmsoft's modules live in its own children of MMEngine's roots, reached by the scope prefix."""
    from mmengine.registry import MODEL_WRAPPERS as ROOT_WRAPPERS
    from mmengine.registry import MODELS as ROOT_MODELS

    from mmsoft.registry import MODEL_WRAPPERS, MODELS
    from mmsoft.utils.dist_env import CPU_WRAPPER

    assert "SOFT" in MODELS.module_dict and "SOFT" not in ROOT_MODELS.module_dict
    assert CPU_WRAPPER in MODEL_WRAPPERS.module_dict and CPU_WRAPPER not in ROOT_WRAPPERS.module_dict
    wrapper = ROOT_WRAPPERS.get(f"mmsoft.{CPU_WRAPPER}")  # what the Runner resolves from model_wrapper_cfg
    assert wrapper is MODEL_WRAPPERS.get(CPU_WRAPPER)
    model = downstream_models(scope).build(dict(type="mmsoft.SOFT", arch="tiny", sym_norm=False))
    assert type(model) is SOFT and model.sym_norm is False


def test_retinanet_config_builds_and_runs():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(ROOT / "configs/retinanet_soft_small.py")
    assert cfg.model.backbone.type == "mmsoft.SOFT" and cfg.optim_wrapper.optimizer.type == "AdamW"
    cfg.model.backbone.arch = "tiny"  # same channels as small; keeps the test fast
    model = MODELS.build(cfg.model).eval()
    assert type(model.backbone) is SOFT
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 96, 128))
    assert len(feats) == 5 and all(f.shape[1] == 256 for f in feats)


def test_upernet_config_builds_and_runs():
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(ROOT / "configs/upernet_soft_small_ade20k.py")
    cfg.model.backbone.arch = "tiny"
    model = MODELS.build(cfg.model).eval()
    assert type(model.backbone) is SOFT
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 128, 128), mode="tensor")
    assert logits.shape == (1, 150, 32, 32)
