"""Run a trained mmdet or mmseg model (any config with an mmsoft backbone) on images and save visualised predictions as
PNG, through mmdet's / mmseg's own inferencers and visualizers.

Each image gets ``OUT_DIR/<name>_pred.png``: the image at least ``--min-size`` pixels on its shorter side (enlarged by
an integer factor, nearest neighbour, so the 128-pixel demo images become 512 and boxes and labels are readable) with
the predictions drawn on it; with ``--show-gt`` the ground truth from the config's test set (the demo dataset's
annotation file, say) is drawn beside it. Several images are also put together in one figure
(``OUT_DIR/predictions.png``, or ``--figure``).

Example:
    python tools/demo/image_demo.py data/demo/coco/val/000000.png data/demo/coco/val/000001.png \
        configs/demo/retinanet_soft-t-norm_fpn_demo.py work_dirs/demo_retinanet/iter_600.pth --show-gt
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import os.path as osp
import sys

import mmcv
import numpy as np
import torch
from matplotlib.figure import Figure
from mmengine.config import Config, DictAction
from mmengine.structures import InstanceData, PixelData

from mmsoft.checkpoint import CheckpointError, use_safe_checkpoint_loading
from mmsoft.utils import check_checkpoint_fits, prepare_scope


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Visualise predictions of an mmdet/mmseg model on images")
    parser.add_argument("img", nargs="+", help="image file(s) or a folder")
    parser.add_argument("config", help="mmdet or mmseg config file")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--out-dir", default="outputs", help="where the visualised PNGs go")
    parser.add_argument("--device", default="cpu", help="device, e.g. cpu or cuda:0")
    parser.add_argument("--score-thr", type=float, default=0.3, help="detection score threshold")
    parser.add_argument("--min-size", type=int, default=512,
                        help="enlarge images whose shorter side is below this many pixels by an integer factor "
                             "before drawing (0: draw at the original size)")
    parser.add_argument("--show-gt", action="store_true",
                        help="draw the ground truth beside the prediction for images of the config's test set")
    parser.add_argument("--figure", help="one PNG with all images (default with several images: "
                                         "OUT_DIR/predictions.png; 'none' for no figure)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override config settings, key=value pairs (e.g. test_dataloader.dataset.data_root=...)")
    return parser.parse_args(argv)


class _FitChecked:
    """Inferencer mixin: refuse a checkpoint that does not fit the model instead of mmengine's warning; keep the
    checkpoint's ``dataset_meta`` (classes, palette)."""

    checkpoint_name = ""
    checkpoint_dataset_meta: dict | None = None

    def _load_weights_to_model(self, model, checkpoint, cfg) -> None:
        if checkpoint is not None:
            check_checkpoint_fits(model, checkpoint, self.checkpoint_name)
            self.checkpoint_dataset_meta = checkpoint.get("meta", {}).get("dataset_meta")
        super()._load_weights_to_model(model, checkpoint, cfg)


def build_inferencer(cfg: Config, checkpoint: str, device: str):
    """(scope, inferencer): mmdet's DetInferencer or mmseg's MMSegInferencer, picked by the config's default_scope,
    loading ``checkpoint`` weights-only and verified, and refusing one that does not fit the model."""
    scope = prepare_scope(cfg)
    use_safe_checkpoint_loading()
    if scope == "mmdet":
        from mmdet.apis import DetInferencer as base
        kwargs = dict(show_progress=False)
    elif scope == "mmseg":
        from mmseg.apis import MMSegInferencer as base
        kwargs = {}
    else:
        raise ValueError(f"unsupported default_scope {scope!r}: expected an mmdet or mmseg config")
    inferencer_cls = type(f"FitChecked{base.__name__}", (_FitChecked, base), dict(checkpoint_name=checkpoint))
    inferencer = inferencer_cls(model=cfg, weights=checkpoint, device=device, **kwargs)
    if scope == "mmseg":  # MMSegInferencer draws Cityscapes' classes unless told: the checkpoint's, else the config's
        meta = inferencer.checkpoint_dataset_meta or _test_set(cfg, scope, lazy=True).metainfo
        inferencer.visualizer.set_dataset_meta(list(meta["classes"]), list(meta["palette"]))
    return scope, inferencer


def _test_set(cfg: Config, scope: str, lazy: bool = False):
    """The config's test dataset; ``lazy``: its metainfo only, annotations not read."""
    registry = importlib.import_module(f"{scope}.registry")
    return registry.DATASETS.build(dict(cfg.test_dataloader.dataset, lazy_init=lazy))


def ground_truth(cfg: Config, scope: str, images: list[str]) -> dict[str, object]:
    """Ground truth of those ``images`` that are in the config's test set, by real path: mmdet ``InstanceData``
    (boxes, labels) or mmseg ``PixelData`` (the label map as the dataset's own LoadAnnotations reads it)."""
    dataset = _test_set(cfg, scope)
    wanted = {osp.realpath(p) for p in images}
    found = {}
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        path = osp.realpath(info["img_path"])
        if path not in wanted:
            continue
        if scope == "mmdet":
            kept = [inst for inst in info.get("instances", []) if not inst.get("ignore_flag", 0)]
            found[path] = InstanceData(
                bboxes=torch.tensor([inst["bbox"] for inst in kept], dtype=torch.float32).reshape(-1, 4),
                labels=torch.tensor([inst["bbox_label"] for inst in kept], dtype=torch.long))
        else:
            load = importlib.import_module(f"{scope}.registry").TRANSFORMS.build(dict(type="LoadAnnotations"))
            seg = load(dict(info))["gt_seg_map"]
            found[path] = PixelData(data=torch.from_numpy(np.ascontiguousarray(seg))[None].long())
    return found


def _enlarged(sample, factor: int):
    """A copy of ``sample`` with boxes, masks and label maps scaled by the integer ``factor``."""
    sample = sample.clone()
    if factor == 1:
        return sample
    for key in ("gt_instances", "pred_instances"):
        if key in sample:
            instances = sample.get(key)
            if "bboxes" in instances:
                instances.bboxes = instances.bboxes * factor
            if "masks" in instances and isinstance(instances.masks, torch.Tensor):
                instances.masks = instances.masks.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    for key in ("gt_sem_seg", "pred_sem_seg"):
        if key in sample:
            data = sample.get(key).data.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
            setattr(sample, key, PixelData(data=data))
    return sample


def enlargement(shape: tuple[int, ...], min_size: int) -> int:
    """The integer factor that brings the shorter side of an ``(H, W, ...)`` image to at least ``min_size``."""
    return max(1, math.ceil(min_size / min(shape[:2]))) if min_size > 0 else 1


def save_figure(panels: list[tuple[str, np.ndarray]], path: str) -> None:
    """All ``(title, RGB image)`` panels in one PNG, up to three per row (matplotlib's ``Figure``: no pyplot state, no
    display backend)."""
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    height = max(img.shape[0] for _, img in panels) / 100
    width = max(img.shape[1] for _, img in panels) / 100
    fig = Figure(figsize=(cols * width, rows * (height + 0.4)))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, img) in zip(axes.flat, panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def visualise(images: list[str], config: str, checkpoint: str, out_dir: str, device: str = "cpu",
              score_thr: float = 0.3, min_size: int = 512, show_gt: bool = False, figure: str | None = None,
              cfg_options: dict | None = None) -> list[str]:
    """Predict on ``images`` and write one visualised PNG per image to ``out_dir`` (plus the figure); returns the
    paths of the per-image PNGs."""
    for img in images:
        if not osp.exists(img):
            raise FileNotFoundError(f"image not found: {img}")
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope, inferencer = build_inferencer(cfg, checkpoint, device)
    samples = inferencer(images, return_datasamples=True)
    if isinstance(samples, dict):  # mmdet wraps the samples in a dict, mmseg does not
        samples = samples["predictions"]
    if not isinstance(samples, (list, tuple)):  # mmseg returns a bare sample for a single image
        samples = [samples]
    truths = ground_truth(cfg, scope, images) if show_gt else {}
    os.makedirs(out_dir, exist_ok=True)
    written, panels = [], []
    for img, sample in zip(images, samples):
        name = osp.splitext(osp.basename(img))[0]
        gt = truths.get(osp.realpath(img))
        if show_gt and gt is None:
            print(f"no ground truth for {img} in the config's test set: drawing the prediction only")
        if gt is not None:
            setattr(sample, "gt_instances" if scope == "mmdet" else "gt_sem_seg", gt)
        image = mmcv.imread(img, channel_order="rgb")
        factor = enlargement(image.shape, min_size)
        image = mmcv.imrescale(image, factor, interpolation="nearest") if factor > 1 else image
        kwargs = dict(pred_score_thr=score_thr) if scope == "mmdet" else {}
        path = osp.join(out_dir, f"{name}_pred.png")
        inferencer.visualizer.add_datasample(name, image, _enlarged(sample, factor), draw_gt=gt is not None,
                                             draw_pred=True, show=False, out_file=path, **kwargs)
        drawn = mmcv.imread(path, channel_order="rgb")
        written.append(path)
        panels.append((f"{name}: ground truth | prediction" if gt is not None else name, drawn))
    if figure is None and len(images) > 1:
        figure = osp.join(out_dir, "predictions.png")
    if figure and figure != "none":
        save_figure(panels, figure)
        print(f"wrote {figure}")
    return written


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = parse_args(argv)
    images = []
    for item in args.img:
        if osp.isdir(item):
            images += sorted(osp.join(item, f) for f in os.listdir(item) if f.lower().endswith((".png", ".jpg")))
        else:
            images.append(item)
    try:
        paths = visualise(images, args.config, args.checkpoint, args.out_dir, args.device, args.score_thr,
                          args.min_size, args.show_gt, args.figure, args.cfg_options)
    except CheckpointError as err:
        sys.exit(f"error: {err}")
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
