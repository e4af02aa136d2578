"""One real training iteration of the demo RetinaNet and UperNet configs on CPU."""
import math
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mmsoft.testing import generate_demo_data
from mmsoft.utils import prepare_scope

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    generate_demo_data(out, seed=0, num_train=6, num_val=2)
    return out


def one_iteration_config(config: str, data_root: str, work_dir: Path) -> Config:
    """The shipped demo config, pointed at ``data_root`` and cut down to one iteration."""
    cfg = Config.fromfile(ROOT / config)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = data_root
        cfg[loader].update(batch_size=2, num_workers=0, persistent_workers=False)
    if cfg.val_evaluator.get("ann_file"):
        cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = f"{data_root}/annotations/instances_val.json"
    cfg.train_cfg.update(max_iters=1, val_interval=10_000)
    cfg.default_hooks.checkpoint.interval = 10_000
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(work_dir)
    return cfg


@pytest.mark.parametrize("config,subdir", [
    ("configs/demo/retinanet_soft-t-norm_fpn_demo.py", "coco"),
    ("configs/demo/upernet_soft-t-norm_demo.py", "ade"),
])
def test_one_training_iteration(config, subdir, demo_data, tmp_path):
    cfg = one_iteration_config(config, str(demo_data / subdir), tmp_path)
    prepare_scope(cfg)
    runner = Runner.from_cfg(cfg)
    before = {n: p.detach().clone() for n, p in runner.model.backbone.named_parameters()}
    runner.train()
    loss = runner.message_hub.get_scalar("train/loss").current()
    assert math.isfinite(loss) and loss > 0
    changed = [n for n, p in runner.model.backbone.named_parameters() if not torch.equal(before[n], p)]
    # AdamW moves every parameter that received a gradient: the whole backbone
    assert len(changed) == len(before), f"unchanged: {sorted(set(before) - set(changed))[:5]}"
