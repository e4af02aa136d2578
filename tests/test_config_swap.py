"""The README's override turns configs shipped inside mmdet / mmseg into SOFT ones that train.

Each test writes a config that inherits a shipped config and adds exactly the override the README shows, then
points the datasets at the synthetic demo data (test plumbing, not part of the override: 3 or 4 classes, 64 px
images, batch 2, no validation) and runs one training iteration with mmengine's Runner, as tools/train.py does.
"""
import math
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import Runner

from mmsoft.models import SOFT
from mmsoft.testing import CLASSES, SEG_CLASSES, generate_demo_data
from mmsoft.utils import check_backbone_channels, prepare_scope

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64

# The README's override, verbatim ("Swapping SOFT into an existing mmdet / mmseg config").
MMDET_OVERRIDE = """\
custom_imports = dict(imports=['mmsoft'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='mmsoft.SOFT', arch='tiny', out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 320, 512]))
"""
MMSEG_OVERRIDE = """\
custom_imports = dict(imports=['mmsoft'], allow_failed_imports=False)
model = dict(
    pretrained=None,
    backbone=dict(_delete_=True, type='mmsoft.SOFT', arch='tiny', out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))
"""
SHIPPED = {
    "mmdet::retinanet/retinanet_r50_fpn_1x_coco.py": MMDET_OVERRIDE,
    "mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py": MMDET_OVERRIDE,
    "mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py": MMDET_OVERRIDE,
    "mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py": MMSEG_OVERRIDE,
}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("swap_demo")
    generate_demo_data(out, seed=0, num_train=4, num_val=1, size=SIZE)
    return out


def swapped(shipped: str, override: str, tmp_path: Path) -> Config:
    """A config file inheriting ``shipped`` plus ``override``, loaded like any user config."""
    path = tmp_path / "swapped.py"
    path.write_text(f"_base_ = '{shipped}'\n{override}")
    return Config.fromfile(path)


def _set_num_classes(node, num_classes: int) -> None:
    """Every ``num_classes`` in the model config (RetinaNet/FCOS head, RoI box and mask heads, decode heads)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "num_classes":
                node[key] = num_classes
            else:
                _set_num_classes(value, num_classes)
    elif isinstance(node, list):
        for item in node:
            _set_num_classes(item, num_classes)


def on_demo_data(cfg: Config, data_root: Path, work_dir: Path) -> Config:
    """Point the training data at the demo set; one iteration of batch 2, no validation, no checkpoint."""
    scope = cfg.default_scope
    loader = cfg.train_dataloader
    if scope == "mmdet":
        classes = CLASSES
        pipeline = loader.dataset.pipeline
        for step in pipeline:
            if step["type"] == "Resize":
                step["scale"] = (SIZE, SIZE)
        loader.dataset = dict(type="CocoDataset", data_root=str(data_root / "coco"), metainfo=dict(classes=classes),
                              ann_file="annotations/instances_train.json", data_prefix=dict(img="train/"),
                              filter_cfg=dict(filter_empty_gt=True, min_size=0), pipeline=pipeline)
    else:
        classes = SEG_CLASSES
        cfg.model.data_preprocessor.size = (SIZE, SIZE)
        loader.dataset = dict(
            type="BaseSegDataset", data_root=str(data_root / "ade"), metainfo=dict(classes=classes),
            img_suffix=".png", seg_map_suffix=".png", reduce_zero_label=False,
            data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
            pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=False),
                      dict(type="PackSegInputs")])
    _set_num_classes(cfg.model, len(classes))
    loader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=1, val_interval=10_000)
    for split in ("val", "test"):
        cfg[f"{split}_dataloader"] = cfg[f"{split}_cfg"] = cfg[f"{split}_evaluator"] = None
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(work_dir)
    return cfg


@pytest.mark.parametrize("shipped", SHIPPED)
def test_swapped_shipped_config_trains_one_iteration(shipped, demo_data, tmp_path):
    cfg = swapped(shipped, SHIPPED[shipped], tmp_path)
    assert cfg.model.backbone == dict(type="mmsoft.SOFT", arch="tiny", out_indices=(0, 1, 2, 3))  # ResNet keys gone
    cfg = on_demo_data(cfg, demo_data, tmp_path / "work")
    # Stochastic depth (SOFT's default drop_path_rate=0.1) can drop a whole block for both images of the batch,
    # which zeroes that block's gradient at random; switch it off so the gradient check below is deterministic.
    cfg.model.backbone.drop_path_rate = 0.0
    prepare_scope(cfg)
    runner = Runner.from_cfg(cfg)
    check_backbone_channels(runner.model)  # what tools/train.py does after building the runner
    backbone = runner.model.backbone
    assert type(backbone) is SOFT and backbone.sym_norm  # SOFT-Norm by default
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    grads: dict[str, torch.Tensor] = {}
    for name, param in backbone.named_parameters():
        param.register_hook(lambda grad, name=name: grads.setdefault(name, grad.detach().clone()))
    runner.train()
    assert runner.iter == 1
    loss = runner.message_hub.get_scalar("train/loss").current()
    assert math.isfinite(loss) and loss > 0
    # every backbone tensor got a finite gradient; the shipped optimizer (SGD with a 1e-5 warmup lr for most) moved
    # them, though some updates are below float32 resolution of the value
    assert sorted(grads) == sorted(before) and all(torch.isfinite(g).all() and g.any() for g in grads.values())
    changed = [n for n, p in backbone.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) > 0.5 * len(before), f"only {len(changed)} of {len(before)} backbone tensors changed"


def _build(cfg: Config) -> torch.nn.Module:
    init_default_scope(prepare_scope(cfg))
    return MODELS.build(cfg.model)


def test_fpn_mismatch_names_the_right_values(tmp_path):
    backbone_only = MMDET_OVERRIDE.replace(",\n    neck=dict(in_channels=[64, 128, 320, 512])", "")
    assert "neck" not in backbone_only
    model = _build(swapped("mmdet::retinanet/retinanet_r50_fpn_1x_coco.py", backbone_only, tmp_path))
    with pytest.raises(ValueError) as err:
        check_backbone_channels(model)
    assert ("FPN in_channels [256, 512, 1024, 2048] do not match mmsoft.SOFT(arch='tiny') outputs "
            "[64, 128, 320, 512] for out_indices (0, 1, 2, 3); set neck.in_channels=[64, 128, 320, 512]"
            in str(err.value))


def test_fpn_mismatch_follows_out_indices(tmp_path):
    override = MMDET_OVERRIDE.replace("arch='tiny', out_indices=(0, 1, 2, 3)", "arch='medium', out_indices=(1, 2, 3)")
    model = _build(swapped("mmdet::retinanet/retinanet_r50_fpn_1x_coco.py", override, tmp_path))
    with pytest.raises(ValueError, match=re.escape("set neck.in_channels=[128, 288, 512]")):
        check_backbone_channels(model)


def test_decode_head_mismatch_names_the_right_values(tmp_path):
    override = MMSEG_OVERRIDE.replace("[64, 128, 320, 512]", "[64, 128, 320, 256]").replace("=320)", "=1024)")
    model = _build(swapped("mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py", override, tmp_path))
    with pytest.raises(ValueError) as err:
        check_backbone_channels(model)
    message = str(err.value)
    assert "UPerHead (decode_head) in_channels [64, 128, 320, 256]" in message
    assert "set decode_head.in_channels=[64, 128, 320, 512]" in message
    assert "FCNHead (auxiliary_head) in_channels 1024" in message and "in_index 2 has 320 channels" in message
    assert "set auxiliary_head.in_channels=320" in message


def test_matching_models_pass_the_check(tmp_path):
    for shipped, override in SHIPPED.items():
        check_backbone_channels(_build(swapped(shipped, override, tmp_path)))


def test_readme_shows_the_tested_override():
    readme = re.sub(r"\s+", "", (ROOT / "README.md").read_text())
    for override in (MMDET_OVERRIDE, MMSEG_OVERRIDE):
        assert re.sub(r"\s+", "", override) in readme, "README's swap section differs from the tested override"
