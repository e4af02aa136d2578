"""tools/demo/image_demo.py writes PNGs a person can read: the image at >= 512 px with the predictions (and, with
--show-gt, the ground truth beside them) drawn by mmdet's / mmseg's visualizers, for one image or several.

The checks read the written PNGs back: size, and pixels that are the enlarged input image with the drawings on it.
"""
from __future__ import annotations

import json
import subprocess

import mmcv
import numpy as np
import pytest
from helpers.demo_checkpoints import (
    DET_CONFIG,
    SEG_CONFIG,
    demo_checkpoints,
    demo_options,
    grayscale_options,
    train_demo,
)
from helpers.run_configs import PYTHON, ROOT, subprocess_env
from helpers.tool_modules import load_tool

pytestmark = pytest.mark.slow
SEG_ALPHA = 0.8  # mmseg's SegLocalVisualizer default: drawn = (1 - alpha) * image + alpha * class colour


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo data and a 1-iteration detection and segmentation checkpoint written by tools/train.py."""
    return demo_checkpoints(tmp_path_factory.mktemp('image_demo'))


def _demo(*args: str) -> str:
    proc = subprocess.run([PYTHON, str(ROOT / "tools/demo/image_demo.py"), *map(str, args)], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def _enlarged(path, factor: int) -> np.ndarray:
    img = mmcv.imread(str(path), channel_order="rgb")
    return img.repeat(factor, 0).repeat(factor, 1)


def _blend_fraction(drawn: np.ndarray, image: np.ndarray, palette: list, labels: np.ndarray | None = None) -> float:
    """Fraction of pixels that are ``image`` blended with a palette colour (with ``labels``: that label's colour)."""
    colours = np.asarray(palette, dtype=np.float64)
    blends = (1 - SEG_ALPHA) * image[None].astype(np.float64) + SEG_ALPHA * colours[:, None, None, :]
    errors = np.abs(blends - drawn[None].astype(np.float64)).max(-1)  # (classes, H, W)
    if labels is None:
        return float((errors.min(0) <= 2).mean())
    return float((np.take_along_axis(errors, labels[None].astype(np.int64), 0)[0] <= 2).mean())


def _seg_palette(demo) -> list:
    import torch

    return list(torch.load(demo["seg"], map_location="cpu", weights_only=True)["meta"]["dataset_meta"]["palette"])


def test_segmentation_of_one_photo_has_the_photo_size(demo, tmp_path):
    photo = tmp_path / "photo.png"
    source = mmcv.imread(str(demo["data"] / "ade/images/validation/000000.png"))
    mmcv.imwrite(mmcv.imresize(source, (451, 300)), str(photo))  # 300 x 451 (H x W), not square
    _demo(photo, SEG_CONFIG, demo["seg"], "--out-dir", tmp_path / "out")
    drawn = mmcv.imread(str(tmp_path / "out/photo_pred.png"), channel_order="rgb")
    assert drawn.shape == (600, 902, 3)  # enlarged x2 to reach 512 px on the shorter side
    # every pixel (but the class-name labels) is the photo blended with a class colour
    assert _blend_fraction(drawn, _enlarged(photo, 2), _seg_palette(demo)) > 0.9
    assert not (tmp_path / "out/predictions.png").exists()  # one image: no figure


def test_segmentation_ground_truth_beside_prediction(demo, tmp_path):
    image = demo["data"] / "ade/images/validation/000001.png"
    _demo(image, SEG_CONFIG, demo["seg"], "--out-dir", tmp_path, "--show-gt",
          "--cfg-options", f"test_dataloader.dataset.data_root={demo['data']}/ade/")
    drawn = mmcv.imread(str(tmp_path / "000001_pred.png"), channel_order="rgb")
    assert drawn.shape == (512, 1024, 3)  # 128 px x4, ground truth | prediction
    gt = mmcv.imread(str(demo["data"] / "ade/annotations/validation/000001.png"), flag="unchanged")
    gt = gt.repeat(4, 0).repeat(4, 1)
    palette, base = _seg_palette(demo), _enlarged(image, 4)
    assert _blend_fraction(drawn[:, :512], base, palette, labels=gt) > 0.9  # left: the annotation's classes
    assert _blend_fraction(drawn[:, 512:], base, palette) > 0.9


def test_detection_ground_truth_beside_prediction_and_one_figure(demo, tmp_path):
    names = ["000000", "000001"]
    images = [demo["data"] / f"coco/val/{n}.png" for n in names]
    out = _demo(*images, DET_CONFIG, demo["det"], "--out-dir", tmp_path, "--show-gt", "--score-thr", "1.01",
                "--cfg-options", *demo_options("det", demo["data"]))
    assert f"wrote {tmp_path / 'predictions.png'}" in out
    ann = json.loads((demo["data"] / "coco/annotations/instances_val.json").read_text())
    ids = {img["file_name"]: img["id"] for img in ann["images"]}
    for name, image in zip(names, images):
        drawn = mmcv.imread(str(tmp_path / f"{name}_pred.png"), channel_order="rgb")
        assert drawn.shape == (512, 1024, 3)
        base = _enlarged(image, 4)
        # right: no prediction passes a threshold above 1, so it is exactly the enlarged image
        assert np.array_equal(drawn[:, 512:], base)
        # left: each annotated box is outlined (its edges changed), the image elsewhere unchanged
        changed = np.abs(drawn[:, :512].astype(int) - base.astype(int)).max(-1) > 10
        boxes = [a["bbox"] for a in ann["annotations"] if a["image_id"] == ids[f"{name}.png"]]
        assert boxes
        outline = np.zeros_like(changed)
        for x, y, w, h in boxes:
            x1, y1, x2, y2 = (int(round(v * 4)) for v in (x, y, x + w, y + h))
            outline[y1, x1:x2] = outline[y2 - 1, x1:x2] = outline[y1:y2, x1] = outline[y1:y2, x2 - 1] = True
            assert changed[outline].mean() > 0.5, (name, (x, y, w, h))
        assert changed.mean() < 0.2
    figure = mmcv.imread(str(tmp_path / "predictions.png"))
    assert figure.shape[1] == 2 * 1024 and figure.shape[0] > 512  # both panels side by side, titled


def test_grayscale_model(demo, tmp_path):
    # a 1-channel detector: trained, then shown on a demo image (read as grayscale by its own pipeline)
    gray = train_demo("det", demo["data"], tmp_path / "wd", options=tuple(grayscale_options()))
    image = demo["data"] / "coco/val/000000.png"
    _demo(image, DET_CONFIG, gray, "--out-dir", tmp_path / "out", "--score-thr", "0",
          "--cfg-options", *grayscale_options(),  # after 1 iteration scores are ~0.01: keep the 3 best boxes
          "model.test_cfg.score_thr=0.0", "model.test_cfg.max_per_img=3")
    drawn = mmcv.imread(str(tmp_path / "out/000000_pred.png"), channel_order="rgb")
    assert drawn.shape == (512, 512, 3)
    changed = np.abs(drawn.astype(int) - _enlarged(image, 4).astype(int)).max(-1) > 10
    assert 0 < changed.mean() < 0.2  # three boxes drawn on the image


def test_enlargement_factor():
    module = load_tool("tools/demo/image_demo.py")
    assert module.enlargement((128, 128, 3), 512) == 4
    assert module.enlargement((300, 451, 3), 512) == 2
    assert module.enlargement((600, 800, 3), 512) == 1
    assert module.enlargement((128, 128, 3), 0) == 1
