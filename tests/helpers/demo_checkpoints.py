"""Small real mmsoft checkpoints for the checkpoint-loading and tool tests: the demo configs trained for a few
iterations by tools/train.py on a handful of generated demo images, so the file is exactly what mmengine writes
(weights, optimizer, message hub with HistoryBuffers, meta with dataset_meta) in ~7 s per config."""
from __future__ import annotations

from pathlib import Path

from helpers.run_configs import PYTHON, ROOT, run_logged

from mmsoft.testing import generate_demo_data

DET_CONFIG = ROOT / "configs/demo/retinanet_soft-t-norm_fpn_demo.py"
SEG_CONFIG = ROOT / "configs/demo/upernet_soft-t-norm_demo.py"
CONFIGS = {"det": DET_CONFIG, "seg": SEG_CONFIG}


def demo_options(kind: str, data_root: Path) -> list[str]:
    """``--cfg-options`` values pointing the ``kind`` ('det' / 'seg') demo config at ``data_root`` (made by
    ``generate_demo_data``), with single-process loaders of 2 images and no evaluation during training."""
    root = f"{data_root}/{'coco' if kind == 'det' else 'ade'}/"
    opts = [f"{split}.{key}" for split in ("train_dataloader", "val_dataloader", "test_dataloader")
            for key in (f"dataset.data_root={root}", "num_workers=0", "persistent_workers=False", "batch_size=2")]
    opts += ["train_cfg.val_interval=1000", "default_hooks.logger.interval=1"]
    if kind == "det":
        ann = f"{root}annotations/instances_val.json"
        opts += [f"val_evaluator.ann_file={ann}", f"test_evaluator.ann_file={ann}"]
    return opts


def grayscale_options() -> list[str]:
    """``--cfg-options`` values turning the demo RetinaNet into a 1-channel (grayscale) model."""
    return ["model.backbone.in_channels=1", "model.data_preprocessor.mean=[128.0]",
            "model.data_preprocessor.std=[64.0]", "model.data_preprocessor.bgr_to_rgb=False",
            *(f"{split}.dataset.pipeline.0.color_type=grayscale"
              for split in ("train_dataloader", "val_dataloader", "test_dataloader"))]


def train_demo(kind: str, data_root: Path, work_dir: Path, iters: int = 1, extra_args: tuple[str, ...] = (),
               options: tuple[str, ...] = ()) -> Path:
    """Train the ``kind`` demo config for ``iters`` iterations with tools/train.py (``options``: more
    ``--cfg-options`` values); returns ``iter_<iters>.pth``."""
    cmd = [PYTHON, str(ROOT / "tools/train.py"), str(CONFIGS[kind]), "--work-dir", str(work_dir), *extra_args,
           "--cfg-options", f"train_cfg.max_iters={iters}", f"default_hooks.checkpoint.interval={iters}",
           *demo_options(kind, data_root), *options]
    work_dir.mkdir(parents=True, exist_ok=True)
    run_logged(cmd, work_dir / "train.log")
    return work_dir / f"iter_{iters}.pth"


def demo_checkpoints(tmp: Path) -> dict[str, Path]:
    """Demo data (4 train / 2 val images) under ``tmp/data`` and 1-iteration detection and segmentation checkpoints:
    ``dict(tmp=..., data=..., det=..., seg=...)``."""
    data = tmp / "data"
    generate_demo_data(data, seed=0, num_train=4, num_val=2)
    return dict(tmp=tmp, data=data, det=train_demo("det", data, tmp / "wd_det"),
                seg=train_demo("seg", data, tmp / "wd_seg"))
