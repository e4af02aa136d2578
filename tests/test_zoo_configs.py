"""Every config under configs/ builds its real model and computes finite training losses on a small input."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from mmsoft.models import SOFT
from mmsoft.utils import check_backbone_channels, prepare_scope

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.py") if "_base_" not in p.parts)
SIZE = 64
# The zoo's model index (OpenMMLab metafile format): published parameter counts and mmsoft's measured ones.
METAFILE = {m["Config"]: m for m in yaml.safe_load((ROOT / "configs/soft/metafile.yml").read_text())["Models"]}
PUBLISHED_PARAMS = {c: int(m["Metadata"]["Published Parameters"].rstrip("M")) for c, m in METAFILE.items()
                    if m["Metadata"]["Published Parameters"]}


def load(config: str) -> tuple[Config, str]:
    cfg = Config.fromfile(ROOT / config)
    scope = prepare_scope(cfg)
    init_default_scope(scope)
    return cfg, scope


def build(cfg: Config, scope: str) -> torch.nn.Module:
    from mmengine.registry import MODELS
    if scope == "mmseg":
        cfg.model.data_preprocessor.size = (SIZE, SIZE)  # instead of padding to the 512 crop
    return revert_sync_batchnorm(MODELS.build(cfg.model))  # SyncBN needs a process group; BN computes the same


def training_batch(scope: str, with_mask: bool) -> dict:
    """Two synthetic images (BatchNorm after UperNet's 1x1 pooling needs two) with one object each (mmdet) or
    random label maps (mmseg), as a dataloader yields them."""
    shape = (SIZE, SIZE)
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape, scale_factor=(1.0, 1.0))
    from mmengine.structures import InstanceData, PixelData
    if scope == "mmdet":
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        gt = InstanceData(bboxes=torch.tensor([[8.0, 10.0, 40.0, 44.0]]), labels=torch.tensor([1]))
        if with_mask:
            mask = np.zeros((1, *shape), dtype=np.uint8)
            mask[0, 10:44, 8:40] = 1
            gt.masks = BitmapMasks(mask, *shape)
        sample = DetDataSample(metainfo=meta, gt_instances=gt)
    else:
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=meta, gt_sem_seg=PixelData(data=torch.randint(0, 4, (1, *shape))))
    images = [torch.randint(0, 256, (3, *shape), dtype=torch.uint8) for _ in range(2)]
    return dict(inputs=images, data_samples=[sample, sample.clone()])


@pytest.mark.parametrize("config", CONFIGS)
def test_config_builds_and_trains_forward(config):
    cfg, scope = load(config)
    assert cfg.model.backbone.type == "mmsoft.SOFT"
    model = build(cfg, scope).train()
    assert type(model.backbone) is SOFT
    check_backbone_channels(model)  # neck / head in_channels fit the arch (e.g. 288 in medium's stage 3)
    params = sum(p.numel() for p in model.parameters())
    if config in PUBLISHED_PARAMS:
        # the paper gives whole millions (rounded or truncated)
        assert abs(params / 1e6 - PUBLISHED_PARAMS[config]) < 0.6, f"{params / 1e6:.2f}M"
    if config in METAFILE:  # the model index states what this model measures
        assert METAFILE[config]["Metadata"]["Parameters"] == f"{params / 1e6:.1f}M"
    torch.manual_seed(0)
    data = model.data_preprocessor(training_batch(scope, with_mask="mask_head" in cfg.model.get("roi_head", {})),
                                   training=True)
    losses = model(**data, mode="loss")
    loss, _ = model.parse_losses(losses)
    assert math.isfinite(loss.item()) and loss.item() > 0


def test_zoo_names_every_published_model():
    zoo = {c for c in CONFIGS if c.startswith("configs/soft/")}
    assert set(METAFILE) == zoo  # the model index lists every zoo config, and only those
    assert len(PUBLISHED_PARAMS) == 10 and set(PUBLISHED_PARAMS) < zoo
    index = yaml.safe_load((ROOT / "model-index.yml").read_text())
    assert index["Import"] == ["configs/soft/metafile.yml"]
    assert "configs/soft/retinanet_soft-s_fpn_1x_coco.py" in zoo  # the plain-SOFT comparison
    plain = Config.fromfile(ROOT / "configs/soft/retinanet_soft-s_fpn_1x_coco.py").model.backbone
    assert plain.sym_norm is False and plain.arch == "small"


@pytest.mark.parametrize("alias,zoo", [
    ("configs/retinanet_soft_small.py", "configs/soft/retinanet_soft-s-norm_fpn_1x_coco.py"),
    ("configs/upernet_soft_small_ade20k.py", "configs/soft/upernet_soft-s-norm_8xb2-160k_ade20k-512x512.py"),
])
def test_documented_entry_points_are_the_zoo_configs(alias, zoo):
    a, b = Config.fromfile(ROOT / alias).to_dict(), Config.fromfile(ROOT / zoo).to_dict()
    assert a == b


@pytest.mark.parametrize("config", ["configs/soft/retinanet_soft-t-norm_fpn_1x_coco.py",
                                    "configs/soft/upernet_soft-s-norm_8xb2-160k_ade20k-512x512.py"])
def test_no_weight_decay_on_norms_and_position_embeddings(config):
    cfg, scope = load(config)
    cfg.model.backbone.arch = "tiny"  # same parameter names as every arch
    model = build(cfg, scope)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g["weight_decay"] for g in wrapper.optimizer.param_groups for p in g["params"]}
    base = cfg.optim_wrapper.optimizer.weight_decay
    params = dict(model.backbone.named_parameters())
    assert base > 0 and cfg.optim_wrapper.optimizer.type == "AdamW"
    for name in ("stages.0.pos_embed", "stages.3.pos_embed", "stages.0.blocks.0.norm1.weight",
                 "stages.0.blocks.0.attn.landmark_norm.bias", "stages.3.norm.weight", "stages.0.patch_embed.1.weight"):
        assert decay[id(params[name])] == 0, name
    for name in ("stages.0.blocks.0.attn.q.weight", "stages.3.blocks.0.mlp.0.weight", "stages.0.patch_embed.0.weight"):
        assert decay[id(params[name])] == base, name
