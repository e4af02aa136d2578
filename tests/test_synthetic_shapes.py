"""Tests of the synthetic shapes demo data generator (mmsoft.testing.synthetic_shapes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmsoft.testing import CLASSES, generate_demo_data, polygon_to_mask
from mmsoft.testing.synthetic_shapes import CLASS_HUE_RANGES, GENERATOR_VERSION

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL, SIZE = 8, 4, 128
SPLITS = (("train", "training", NUM_TRAIN), ("val", "validation", NUM_VAL))


def _gen(out: Path, **kwargs) -> dict:
    args = dict(seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL, size=SIZE)
    args.update(kwargs)
    return generate_demo_data(out, **args)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def _hue_in_range(hue: np.ndarray, cls: str, tol: float = 0.03) -> np.ndarray:
    lo, hi = CLASS_HUE_RANGES[cls]
    return np.mod(hue - (lo - tol), 1.0) <= (hi - lo) + 2 * tol


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _gen(tmp_path_factory.mktemp("demo") / "data")


def test_layout_and_meta(demo: dict) -> None:
    assert demo["skipped"] is False
    root = Path(demo["root"])
    meta = _load(root / "meta.json")
    assert meta["seed"] == 0 and meta["num_train"] == NUM_TRAIN and meta["num_val"] == NUM_VAL
    assert meta["size"] == SIZE and meta["version"] == GENERATOR_VERSION and meta["classes"] == list(CLASSES)
    for split, ade_split, count in SPLITS:
        names = [f"{i:06d}.png" for i in range(count)]
        assert sorted(p.name for p in (root / "coco" / split).iterdir()) == names
        assert sorted(p.name for p in (root / "ade" / "images" / ade_split).iterdir()) == names
        assert sorted(p.name for p in (root / "ade" / "annotations" / ade_split).iterdir()) == names
        for name in names:  # ADE images are the COCO images
            coco_bytes = (root / "coco" / split / name).read_bytes()
            assert (root / "ade" / "images" / ade_split / name).read_bytes() == coco_bytes
            img = Image.open(root / "coco" / split / name)
            assert img.mode == "RGB" and img.size == (SIZE, SIZE)


def test_deterministic_and_seed_dependent(tmp_path: Path, demo: dict) -> None:
    first = _tree(Path(demo["root"]))
    second = _tree(Path(_gen(tmp_path / "again")["root"]))
    assert len(first) == 1 + 3 * (NUM_TRAIN + NUM_VAL) + 2
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    other = _tree(Path(_gen(tmp_path / "seed1", seed=1)["root"]))
    assert other["coco/train/000000.png"] != first["coco/train/000000.png"]
    assert other["coco/annotations/instances_train.json"] != first["coco/annotations/instances_train.json"]
    # each image has its own stream: fewer images give a prefix of the same files
    fewer = _tree(Path(_gen(tmp_path / "fewer", num_train=3)["root"]))
    for i in range(3):
        assert fewer[f"coco/train/{i:06d}.png"] == first[f"coco/train/{i:06d}.png"]
        assert fewer[f"ade/annotations/training/{i:06d}.png"] == first[f"ade/annotations/training/{i:06d}.png"]


def test_coco_json_structure(demo: dict) -> None:
    for split, _, count in SPLITS:
        coco = _load(demo[f"coco_{split}_ann"])
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
        assert tuple(c["name"] for c in coco["categories"]) == CLASSES
        assert [im["id"] for im in coco["images"]] == list(range(1, count + 1))
        assert all(im["height"] == SIZE and im["width"] == SIZE for im in coco["images"])
        assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
        per_image: dict[int, list] = {}
        for ann in coco["annotations"]:
            per_image.setdefault(ann["image_id"], []).append(ann)
            assert ann["category_id"] in (1, 2, 3) and ann["iscrowd"] == 0
            assert len(ann["segmentation"]) == 1
            poly = ann["segmentation"][0]
            assert len(poly) % 2 == 0 and len(poly) // 2 == {1: 24, 2: 4, 3: 3}[ann["category_id"]]
        assert sorted(per_image) == list(range(1, count + 1))  # every image has objects
        assert all(1 <= len(v) <= 4 for v in per_image.values())
        for anns in per_image.values():  # no two boxes of an image overlap
            for i, a in enumerate(anns):
                for b in anns[i + 1:]:
                    ax, ay, aw, ah = a["bbox"]
                    bx, by, bw, bh = b["bbox"]
                    assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay


def test_boxes_inside_image_and_match_polygons(demo: dict) -> None:
    for split, _, _ in SPLITS:
        for ann in _load(demo[f"coco_{split}_ann"])["annotations"]:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= SIZE and y + h <= SIZE
            assert 17.95 <= max(w, h) <= 56.05  # longer box side 18-56 px at 128
            xs, ys = ann["segmentation"][0][0::2], ann["segmentation"][0][1::2]
            assert abs(min(xs) - x) <= 1 and abs(min(ys) - y) <= 1
            assert abs(max(xs) - (x + w)) <= 1 and abs(max(ys) - (y + h)) <= 1
            pixels = polygon_to_mask(ann["segmentation"][0], SIZE, SIZE).sum()
            assert abs(pixels - ann["area"]) <= 0.1 * ann["area"] + 2


def test_masks_cover_object_colour(demo: dict) -> None:
    root = Path(demo["coco_root"])
    for split, _, _ in SPLITS:
        coco = _load(demo[f"coco_{split}_ann"])
        files = {im["id"]: im["file_name"] for im in coco["images"]}
        for ann in coco["annotations"]:
            img = Image.open(root / split / files[ann["image_id"]])
            hsv = np.asarray(img.convert("HSV")).astype(np.float64) / 255.0
            cls = CLASSES[ann["category_id"] - 1]
            mask = polygon_to_mask(ann["segmentation"][0], SIZE, SIZE)
            assert _hue_in_range(hsv[..., 0][mask], cls).mean() >= 0.98
            assert np.median(hsv[..., 1][mask]) >= 0.45
            # an independent rasteriser (PIL, which also paints the boundary) mostly lands on the object too
            canvas = Image.new("L", (SIZE, SIZE), 0)
            ImageDraw.Draw(canvas).polygon(ann["segmentation"][0], fill=1)
            pil_mask = np.asarray(canvas) > 0
            assert _hue_in_range(hsv[..., 0][pil_mask], cls).mean() >= 0.75
            # and the object's colour does not spill outside its polygon (a ring around the box)
            x, y, w, h = ann["bbox"]
            x0, y0 = max(int(x) - 3, 0), max(int(y) - 3, 0)
            x1, y1 = min(int(x + w) + 4, SIZE), min(int(y + h) + 4, SIZE)
            ring = np.zeros((SIZE, SIZE), dtype=bool)
            ring[y0:y1, x0:x1] = True
            ring[max(int(y) - 1, 0):int(y + h) + 2, max(int(x) - 1, 0):int(x + w) + 2] = False
            assert ring.any()
            ring_sat = hsv[..., 1][ring]
            assert np.mean(ring_sat >= 0.5) < 0.5


def test_label_maps_agree_with_coco(demo: dict) -> None:
    ade = Path(demo["ade_root"])
    seen = set()
    for split, ade_split, _ in SPLITS:
        coco = _load(demo[f"coco_{split}_ann"])
        for im in coco["images"]:
            label = Image.open(ade / "annotations" / ade_split / im["file_name"])
            assert label.mode == "L" and label.size == (SIZE, SIZE)
            label = np.asarray(label)
            assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}
            expected = np.zeros((SIZE, SIZE), dtype=np.uint8)
            for ann in coco["annotations"]:
                if ann["image_id"] == im["id"]:
                    expected[polygon_to_mask(ann["segmentation"][0], SIZE, SIZE)] = ann["category_id"]
            np.testing.assert_array_equal(label, expected)
            assert (label == 0).mean() > 0.3
            seen |= set(np.unique(label).tolist())
    assert seen == {0, 1, 2, 3}


def test_coco_loads_with_pycocotools(demo: dict) -> None:
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    ade = Path(demo["ade_root"])
    for split, ade_split, count in SPLITS:
        coco = COCO(demo[f"coco_{split}_ann"])
        assert coco.getCatIds() == [1, 2, 3] and len(coco.getImgIds()) == count
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            label = np.asarray(Image.open(ade / "annotations" / ade_split / info["file_name"]))
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
                cm = coco.annToMask(ann).astype(bool)  # what mmdet decodes from the polygon
                gt = polygon_to_mask(ann["segmentation"][0], SIZE, SIZE)
                iou = (cm & gt).sum() / (cm | gt).sum()
                assert iou >= 0.9, (split, ann["id"], iou)
                assert (label[cm] == ann["category_id"]).mean() >= 0.9


def test_polygon_to_mask_convention() -> None:
    mask = polygon_to_mask([2, 2, 6, 2, 6, 6, 2, 6], 10, 12)
    expected = np.zeros((10, 12), dtype=bool)
    expected[2:6, 2:6] = True
    np.testing.assert_array_equal(mask, expected)
    tri = polygon_to_mask([0, 0, 8, 0, 0, 8], 10, 10)
    # pixel centres (c + 0.5, r + 0.5) with c + r + 1 < 8
    assert tri[0, 0] and tri[0, 6] and not tri[0, 7] and not tri[7, 7] and tri.sum() == 28


def test_skip_force_and_regenerate(tmp_path: Path) -> None:
    out = tmp_path / "d"
    first = _gen(out)
    ann = Path(first["coco_train_ann"])
    before = _tree(out)
    stamp = ann.stat().st_mtime_ns
    again = _gen(out)
    assert again["skipped"] is True and ann.stat().st_mtime_ns == stamp
    sentinel = out / "coco" / "train" / "stale.png"
    sentinel.write_bytes(b"x")
    keep = out / "unrelated.txt"
    keep.write_text("mine")
    forced = _gen(out, force=True)
    assert forced["skipped"] is False and not sentinel.exists() and keep.read_text() == "mine"
    assert {k: v for k, v in _tree(out).items() if k != "unrelated.txt"} == before
    # other arguments: regenerated without --force, stale files of the old run removed
    smaller = _gen(out, num_val=2)
    assert smaller["skipped"] is False
    assert sorted(p.name for p in Path(smaller["coco_val_img_dir"]).iterdir()) == ["000000.png", "000001.png"]
    assert len(_load(smaller["coco_val_ann"])["images"]) == 2
    # an interrupted run (no meta.json) is not mistaken for a complete one
    (out / "meta.json").unlink()
    with pytest.raises(FileExistsError):
        _gen(out, num_val=2)
    assert _gen(out, num_val=2, force=True)["skipped"] is False


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "misc" / "make_demo_data.py"), "--out", str(out),
           "--seed", "3", "--num-train", "3", "--num-val", "2", "--size", "96"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    run1 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert run1.returncode == 0, run1.stderr
    assert "generating" in run1.stdout and "skipping" not in run1.stdout
    meta = _load(out / "meta.json")
    assert (meta["seed"], meta["num_train"], meta["num_val"], meta["size"]) == (3, 3, 2, 96)
    assert Image.open(out / "coco" / "train" / "000000.png").size == (96, 96)
    run2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert run2.returncode == 0 and "skipping" in run2.stdout and "generating" not in run2.stdout
    run3 = subprocess.run(cmd + ["--force"], capture_output=True, text=True, env=env, timeout=60)
    assert run3.returncode == 0 and "generating" in run3.stdout
