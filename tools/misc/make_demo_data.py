#!/usr/bin/env python
"""Write the seeded synthetic shapes demo data (COCO instances + ADE-style semantic labels).

Example::

    python tools/misc/make_demo_data.py --out data/demo --seed 0

The generator is ``mmsoft.testing.synthetic_shapes``.
"""
from __future__ import annotations

import argparse
import sys
import time

from mmsoft.testing import synthetic_shapes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (defaults come from the generator module)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/demo", help="output root (default: data/demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--num-train", type=int, default=synthetic_shapes.DEFAULT_NUM_TRAIN,
                        help=f"training images (default: {synthetic_shapes.DEFAULT_NUM_TRAIN})")
    parser.add_argument("--num-val", type=int, default=synthetic_shapes.DEFAULT_NUM_VAL,
                        help=f"validation images (default: {synthetic_shapes.DEFAULT_NUM_VAL})")
    parser.add_argument("--size", type=int, default=synthetic_shapes.DEFAULT_SIZE,
                        help=f"image side in pixels (default: {synthetic_shapes.DEFAULT_SIZE})")
    parser.add_argument("--force", action="store_true", help="regenerate even if OUT/meta.json matches")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate (or skip) the demo data and print where it is."""
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        result = synthetic_shapes.generate_demo_data(args.out, seed=args.seed, num_train=args.num_train,
                                                     num_val=args.num_val, size=args.size, force=args.force,
                                                     verbose=True)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not result["skipped"]:
        print(f"done in {time.perf_counter() - start:.1f} s")
    for key in ("coco_root", "coco_train_ann", "coco_val_ann", "ade_root"):
        print(f"  {key}: {result[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
