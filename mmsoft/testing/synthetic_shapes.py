"""Seeded, deterministic synthetic "shapes" data for the mmsoft CPU demo (numpy + Pillow only).

One generator feeds two layouts that share the very same pictures:

* COCO detection / instance segmentation under ``OUT/coco/``: ``train/*.png``, ``val/*.png`` and
  ``annotations/instances_{train,val}.json`` (category ids 1..3 in :data:`CLASSES` order, one
  polygon per object, ``iscrowd`` 0).
* ADE20K-style semantic segmentation under ``OUT/ade/``: ``images/{training,validation}/*.png``
  (byte-identical copies of the COCO images of the same split and stem) and
  ``annotations/{training,validation}/*.png`` (single-channel uint8 label maps: 0 = background,
  ``k`` = ``CLASSES[k - 1]``). Use ``img_suffix='.png'``, ``seg_map_suffix='.png'`` and
  ``reduce_zero_label=False`` with :data:`SEG_CLASSES` (background is a real, learnable class).

Every image holds 1-4 objects (circles as 24-gons, rotated squares, rotated and slightly jittered
triangles) whose box's longer side is 18-56 px at the default 128 px image size (scaled with
``size``), each class with its own hue range, on a muted textured background (low-frequency noise
plus a gradient) with mild per-pixel noise. Objects never overlap (their boxes keep a gap), so each
box and polygon describes the object's fully visible shape. Pixels, polygon and label map come from
one polygon: the rounded vertex list written to the JSON is what :func:`polygon_to_mask` fills
(pixel-centre sampling, the convention ``pycocotools`` follows, so the masks mmdet decodes from the
polygons agree with the pixels to within boundary pixels).

Same arguments give byte-identical files: each image uses its own ``numpy.random.Generator``
seeded from ``(seed, split, index)``, PNGs carry no timestamps and the JSON is written with sorted
keys. ``OUT/meta.json`` (written last) records the arguments and :data:`GENERATOR_VERSION`; a later
call with the same arguments finds it and skips the work unless ``force=True``.
"""
from __future__ import annotations

import colorsys
import json
import math
import shutil
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

__all__ = [
    "CLASSES",
    "SEG_CLASSES",
    "CLASS_HUE_RANGES",
    "GENERATOR_VERSION",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "DEFAULT_SIZE",
    "generate_demo_data",
    "demo_data_paths",
    "render_sample",
    "polygon_to_mask",
]

#: Object classes; COCO category id of ``CLASSES[i]`` is ``i + 1`` and so is its label-map value.
CLASSES = ("circle", "square", "triangle")
#: Semantic-segmentation classes (label-map value = index).
SEG_CLASSES = ("background",) + CLASSES
#: Hue range (HSV hue in turns, may wrap below 0) of each class's fill colour.
CLASS_HUE_RANGES = {"circle": (-0.04, 0.05), "square": (0.27, 0.40), "triangle": (0.57, 0.69)}
#: Bump whenever the output for given arguments changes; stored in ``meta.json``.
GENERATOR_VERSION = 1
_FORMER_NAME = "mmsoft.datasets.synthetic_shapes"

DEFAULT_NUM_TRAIN = 400
DEFAULT_NUM_VAL = 80
DEFAULT_SIZE = 128

_SPLITS = (("train", "training", 0), ("val", "validation", 1))
_MAX_OBJECTS = 4
_MIN_REL_SIZE = 18 / 128  # longer box side of an object, as a fraction of the image size
_MAX_REL_SIZE = 56 / 128
_CIRCLE_VERTICES = 24
_BORDER = 1.0  # polygons stay this far inside the image
_GAP = 2.0  # minimum gap between object boxes
_PLACEMENT_TRIES = 30
_PNG_OPTS = {"format": "PNG", "compress_level": 6, "optimize": False}

PathLike = Union[str, Path]
Polygon = list[float]  # flat [x1, y1, x2, y2, ...]


def _shape_vertices(cls: str, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Return an (N, 2) vertex array of one randomly rotated shape whose box's longer side is ``scale``."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    if cls == "circle":
        theta = angle + np.arange(_CIRCLE_VERTICES) * (2.0 * math.pi / _CIRCLE_VERTICES)
        radius = np.ones(_CIRCLE_VERTICES)
    elif cls == "square":
        theta = angle + np.arange(4) * (math.pi / 2.0)
        radius = np.ones(4)
    elif cls == "triangle":  # equilateral, slightly jittered
        theta = angle + np.arange(3) * (2.0 * math.pi / 3.0) + rng.uniform(-0.12, 0.12, size=3)
        radius = rng.uniform(0.9, 1.1, size=3)
    else:
        raise ValueError(f"unknown class {cls!r}")
    verts = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    return verts * (scale / (verts.max(axis=0) - verts.min(axis=0)).max())


def _hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    """Return an RGB colour (float, 0..255) from HSV in [0, 1] (hue wraps)."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float64) * 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, amplitude: float) -> np.ndarray:
    """Return (size, size, 3) low-frequency noise: a random cells x cells grid upsampled bicubically."""
    grid = rng.normal(0.0, amplitude, size=(3, cells, cells)).astype(np.float32)
    channels = [np.asarray(Image.fromarray(g, mode="F").resize((size, size), Image.BICUBIC)) for g in grid]
    return np.stack(channels, axis=-1).astype(np.float64)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Return a muted, textured (size, size, 3) float background in roughly 0..255."""
    base = _hsv_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.22), rng.uniform(0.35, 0.75))
    img = np.broadcast_to(base, (size, size, 3)).copy()
    img += _smooth_noise(rng, size, int(rng.integers(3, 7)), 18.0)
    img += _smooth_noise(rng, size, int(rng.integers(10, 20)), 7.0)
    direction = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1) - 0.5
    ramp = xs * math.cos(direction) + ys * math.sin(direction)  # -0.7..0.7
    tint = rng.uniform(0.6, 1.0, size=3)
    img += ramp[..., None] * tint * rng.uniform(-50.0, 50.0)
    return img


def _place_objects(rng: np.random.Generator, size: int) -> list[tuple[int, list[float]]]:
    """Return non-overlapping objects as (class index, rounded flat polygon) pairs."""
    num = int(rng.integers(1, _MAX_OBJECTS + 1))
    smin, smax = _MIN_REL_SIZE * size, _MAX_REL_SIZE * size
    boxes: list[tuple[float, float, float, float]] = []
    objects: list[tuple[int, list[float]]] = []
    for _ in range(num):
        for _ in range(_PLACEMENT_TRIES):
            label = int(rng.integers(len(CLASSES)))
            verts = _shape_vertices(CLASSES[label], rng.uniform(smin, smax), rng)
            lo, hi = verts.min(axis=0), verts.max(axis=0)
            cx = rng.uniform(_BORDER - lo[0], size - 1 - _BORDER - hi[0])
            cy = rng.uniform(_BORDER - lo[1], size - 1 - _BORDER - hi[1])
            pts = np.round(verts + np.array([cx, cy]), 2)
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            if any(x0 < bx1 + _GAP and bx0 < x1 + _GAP and y0 < by1 + _GAP and by0 < y1 + _GAP
                   for bx0, by0, bx1, by1 in boxes):
                continue
            boxes.append((float(x0), float(y0), float(x1), float(y1)))
            objects.append((label, [float(v) for v in pts.reshape(-1)]))
            break
    return objects


def polygon_to_mask(polygon: Polygon, height: int, width: int) -> np.ndarray:
    """Rasterise a flat polygon as the generator draws it: a bool mask of pixels whose centre is inside.

    Pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)`` (the COCO convention), so its
    centre is ``(col + 0.5, row + 0.5)``; the even-odd rule decides insideness. This agrees with
    ``pycocotools`` to within boundary pixels (IoU ~0.99) and its area matches the polygon area.
    """
    xs, ys = np.asarray(polygon[0::2], dtype=np.float64), np.asarray(polygon[1::2], dtype=np.float64)
    mask = np.zeros((height, width), dtype=bool)
    c0, c1 = max(int(math.floor(xs.min())) - 1, 0), min(int(math.ceil(xs.max())) + 1, width)
    r0, r1 = max(int(math.floor(ys.min())) - 1, 0), min(int(math.ceil(ys.max())) + 1, height)
    if c0 >= c1 or r0 >= r1:
        return mask
    py = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
    px = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5
    inside = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for x1, y1, x2, y2 in zip(xs, ys, np.roll(xs, -1), np.roll(ys, -1)):
        if y1 == y2:
            continue  # horizontal edges never cross a scanline under the half-open rule
        crosses = (y1 > py) != (y2 > py)
        x_at = x1 + (py - y1) * ((x2 - x1) / (y2 - y1))
        inside ^= crosses & (px < x_at)
    mask[r0:r1, c0:c1] = inside
    return mask


def _polygon_area(polygon: Polygon) -> float:
    """Return the shoelace area of a flat polygon."""
    xs, ys = np.asarray(polygon[0::2]), np.asarray(polygon[1::2])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))


def render_sample(seed: int, split_id: int, index: int, size: int = DEFAULT_SIZE
                  ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Render one sample: (uint8 RGB image, uint8 label map, objects with label/polygon/bbox/area)."""
    rng = np.random.default_rng([seed, split_id, index])
    img = _background(rng, size)
    label_map = np.zeros((size, size), dtype=np.uint8)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    objects = []
    for label, polygon in _place_objects(rng, size):
        mask = polygon_to_mask(polygon, size, size)
        lo, hi = CLASS_HUE_RANGES[CLASSES[label]]
        colour = _hsv_rgb(rng.uniform(lo, hi), rng.uniform(0.6, 0.9), rng.uniform(0.7, 0.95))
        # a gentle shading ramp across the object so fills are not perfectly flat
        direction = rng.uniform(0.0, 2.0 * math.pi)
        xs_p, ys_p = polygon[0::2], polygon[1::2]
        extent = max(max(xs_p) - min(xs_p), max(ys_p) - min(ys_p), 1.0)
        shade = ((xs - np.mean(xs_p)) * math.cos(direction) + (ys - np.mean(ys_p)) * math.sin(direction)) / extent
        img[mask] = colour * (1.0 + 0.25 * shade[mask][:, None])
        label_map[mask] = label + 1
        x0, y0, x1, y1 = min(xs_p), min(ys_p), max(xs_p), max(ys_p)
        objects.append({
            "label": label,
            "polygon": polygon,
            "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
            "area": round(_polygon_area(polygon), 2),
        })
    img += rng.normal(0.0, 4.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label_map, objects


def demo_data_paths(out_dir: PathLike) -> dict[str, str]:
    """Return the paths :func:`generate_demo_data` writes under ``out_dir`` (nothing is created)."""
    root = Path(out_dir)
    coco, ade = root / "coco", root / "ade"
    return {
        "root": str(root),
        "meta_file": str(root / "meta.json"),
        "coco_root": str(coco),
        "coco_train_img_dir": str(coco / "train"),
        "coco_val_img_dir": str(coco / "val"),
        "coco_train_ann": str(coco / "annotations" / "instances_train.json"),
        "coco_val_ann": str(coco / "annotations" / "instances_val.json"),
        "ade_root": str(ade),
        "ade_train_img_dir": str(ade / "images" / "training"),
        "ade_val_img_dir": str(ade / "images" / "validation"),
        "ade_train_ann_dir": str(ade / "annotations" / "training"),
        "ade_val_ann_dir": str(ade / "annotations" / "validation"),
    }


def _meta(seed: int, num_train: int, num_val: int, size: int) -> dict[str, Any]:
    """Return the meta.json content identifying one generation."""
    return {
        "generator": "mmsoft.testing.synthetic_shapes",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "size": size,
        "classes": list(CLASSES),
    }


def _read_json(path: Path) -> Any:
    """Return parsed JSON from ``path`` or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as deterministic JSON (sorted keys, compact separators, trailing newline)."""
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


def _write_split(root: Path, seed: int, split: str, ade_split: str, split_id: int, count: int, size: int) -> None:
    """Render one split and write its COCO images/annotations and ADE images/label maps."""
    coco_img_dir = root / "coco" / split
    ade_img_dir = root / "ade" / "images" / ade_split
    ade_ann_dir = root / "ade" / "annotations" / ade_split
    for d in (coco_img_dir, ade_img_dir, ade_ann_dir, root / "coco" / "annotations"):
        d.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        img, label_map, objects = render_sample(seed, split_id, index, size)
        name = f"{index:06d}.png"
        Image.fromarray(img, mode="RGB").save(coco_img_dir / name, **_PNG_OPTS)
        shutil.copyfile(coco_img_dir / name, ade_img_dir / name)
        Image.fromarray(label_map, mode="L").save(ade_ann_dir / name, **_PNG_OPTS)
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        for obj in objects:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": obj["label"] + 1,
                "bbox": obj["bbox"],
                "area": obj["area"],
                "segmentation": [obj["polygon"]],
                "iscrowd": 0,
            })
    coco = {
        "info": {"description": f"mmsoft synthetic shapes ({split}), seed {seed}", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)],
    }
    _write_json(root / "coco" / "annotations" / f"instances_{split}.json", coco)


def generate_demo_data(out_dir: PathLike, seed: int = 0, num_train: int = DEFAULT_NUM_TRAIN,
                       num_val: int = DEFAULT_NUM_VAL, size: int = DEFAULT_SIZE, force: bool = False,
                       verbose: bool = False) -> dict[str, Any]:
    """Write the COCO and ADE-style demo data under ``out_dir`` (or skip if already there); return paths.

    The returned dict holds the entries of :func:`demo_data_paths` plus ``skipped`` (True when a
    matching ``meta.json`` was found and nothing was written) and ``meta``. A directory with a
    different generation (other meta) is replaced; ``coco/`` or ``ade/`` without our ``meta.json``
    are only replaced with ``force=True``. Nothing outside ``coco/``, ``ade/`` and ``meta.json`` is
    touched.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if size < 48:
        raise ValueError(f"size must be >= 48, got {size}")
    root = Path(out_dir)
    paths: dict[str, Any] = demo_data_paths(root)
    meta = _meta(int(seed), int(num_train), int(num_val), int(size))
    meta_file = root / "meta.json"
    old_meta = _read_json(meta_file)
    complete = all(Path(paths[k]).is_file() for k in ("coco_train_ann", "coco_val_ann"))
    if old_meta == meta and complete and not force:
        if verbose:
            print(f"demo data in {root} already matches {meta_file.name} (seed={seed}, num_train={num_train}, "
                  f"num_val={num_val}, size={size}); skipping (use --force to regenerate)")
        return {**paths, "skipped": True, "meta": meta}
    # data written before the module moved from mmsoft.datasets is ours too (regenerated, identical pictures)
    ours = isinstance(old_meta, dict) and old_meta.get("generator") in (meta["generator"], _FORMER_NAME)
    managed = [root / "coco", root / "ade"]
    if not force and not ours and any(p.exists() for p in managed):
        raise FileExistsError(f"{root} holds coco/ or ade/ that this generator did not write (no matching "
                              f"meta.json); pass force=True (--force) to replace them")
    meta_file.unlink(missing_ok=True)
    for p in managed:
        if p.exists():
            shutil.rmtree(p)
    if verbose:
        print(f"generating demo data in {root}: seed={seed}, {num_train} train + {num_val} val images of "
              f"{size}x{size}, classes {CLASSES}")
    for split, ade_split, split_id in _SPLITS:
        _write_split(root, int(seed), split, ade_split, split_id, num_train if split == "train" else num_val, size)
    _write_json(meta_file, meta)  # last: its presence marks a complete generation
    return {**paths, "skipped": False, "meta": meta}
