"""Run a trained mmdet or mmseg model (any config with an mmsoft backbone) on images and save
visualised predictions as PNG, through mmdet's / mmseg's own inferencers.

Example:
    python tools/demo/image_demo.py data/demo/coco/val/000000.png \
        configs/demo/retinanet_soft-t-norm_fpn_demo.py work_dirs/demo/iter_600.pth --out-dir outputs
"""
from __future__ import annotations

import argparse
import os
import os.path as osp

from mmengine.config import Config

from mmsoft.utils import allow_mmengine_checkpoint_types, prepare_scope


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Visualise predictions of an mmdet/mmseg model on images")
    parser.add_argument("img", nargs="+", help="image file(s) or a folder")
    parser.add_argument("config", help="mmdet or mmseg config file")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--out-dir", default="outputs", help="where the visualised PNGs go")
    parser.add_argument("--device", default="cpu", help="device, e.g. cpu or cuda:0")
    parser.add_argument("--score-thr", type=float, default=0.3, help="detection score threshold")
    return parser.parse_args()


def build_inferencer(config: str, checkpoint: str, device: str):
    """mmdet's DetInferencer or mmseg's MMSegInferencer, picked by the config's default_scope."""
    cfg = Config.fromfile(config)
    scope = prepare_scope(cfg)
    allow_mmengine_checkpoint_types()
    if scope == "mmdet":
        from mmdet.apis import DetInferencer
        return scope, DetInferencer(model=cfg, weights=checkpoint, device=device, show_progress=False)
    if scope == "mmseg":
        from mmseg.apis import MMSegInferencer
        return scope, MMSegInferencer(model=cfg, weights=checkpoint, device=device)
    raise ValueError(f"unsupported default_scope {scope!r}: expected an mmdet or mmseg config")


def visualise(images: list[str], config: str, checkpoint: str, out_dir: str, device: str = "cpu",
              score_thr: float = 0.3) -> list[str]:
    """Predict on ``images`` and write one visualised PNG per image to ``out_dir``; returns the paths."""
    for img in images:
        if not osp.exists(img):
            raise FileNotFoundError(f"image not found: {img}")
    scope, inferencer = build_inferencer(config, checkpoint, device)
    os.makedirs(out_dir, exist_ok=True)
    kwargs = dict(pred_score_thr=score_thr) if scope == "mmdet" else {}
    results = inferencer(images, return_vis=True, **kwargs)
    import mmcv

    written = []
    for img, vis in zip(images, results["visualization"]):
        path = osp.join(out_dir, osp.splitext(osp.basename(img))[0] + "_pred.png")
        mmcv.imwrite(vis[..., ::-1], path)  # inferencers return RGB
        written.append(path)
    return written


def main() -> None:
    """Command-line entry point."""
    args = parse_args()
    images = []
    for item in args.img:
        if osp.isdir(item):
            images += sorted(osp.join(item, f) for f in os.listdir(item) if f.lower().endswith((".png", ".jpg")))
        else:
            images.append(item)
    for path in visualise(images, args.config, args.checkpoint, args.out_dir, args.device, args.score_thr):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
