"""Convert an official SOFT / SOFT-Norm ImageNet checkpoint (github fudan-zvg/SOFT, timm-style keys) to mmsoft.

    python tools/model_converters/soft2mmsoft.py SOFT_Tiny_norm.pth.tar soft-t-norm_in1k_mmsoft.pth

The output is a plain state dict of ``mmsoft.SOFT`` (classifier head removed; the stage-4 class token and its
position slot kept, so that it loads with ``strict=True`` into ``SOFT(with_cls_token=True)``, which computes
exactly the reference model's stage maps; ``--no-cls-token`` removes them for ``with_cls_token=False``). It works as
``init_cfg=dict(type='Pretrained', checkpoint=...)`` for either setting. Such a config can also point at the
original file directly: the backbone converts it on the fly.
"""
from __future__ import annotations

import argparse
import sys
from collections import OrderedDict

import torch

from mmsoft.checkpoint import CheckpointError, load_checkpoint_safely
from mmsoft.models.backbones.soft_converter import soft_convert


def parse_args() -> argparse.Namespace:
    """Parse the command line (mmdet converter style: SRC DST)."""
    parser = argparse.ArgumentParser(
        description="Convert keys of official SOFT ImageNet checkpoints to mmsoft's SOFT backbone names")
    parser.add_argument("src", help="source checkpoint (reference SOFT / timm format), path or URL")
    parser.add_argument("dst", help="where to save the converted state dict")
    parser.add_argument("--no-ema", action="store_true",
                        help="use 'state_dict' instead of the EMA weights ('state_dict_ema', the ones the reference "
                             "evaluates) when the checkpoint has both")
    parser.add_argument("--no-cls-token", action="store_true",
                        help="drop the stage-4 class token and its position slot (for SOFT(with_cls_token=False))")
    parser.add_argument("--skip-unknown", action="store_true",
                        help="leave out (and list) keys the converter does not know instead of stopping")
    return parser.parse_args()


def main() -> None:
    """Load SRC, convert it and save the state dict to DST."""
    args = parse_args()
    try:  # weights-only with the allowlist, verified; a damaged or unsafe file stops with its name and the damage
        checkpoint = load_checkpoint_safely(args.src, map_location="cpu")
    except CheckpointError as err:
        sys.exit(f"error: {err}")
    state = soft_convert(checkpoint, strict=not args.skip_unknown, use_ema=not args.no_ema,
                         with_cls_token=not args.no_cls_token)
    torch.save(OrderedDict(state), args.dst)  # a plain OrderedDict: loadable without mmsoft, weights_only-safe
    passed = len(state) - state.reference_keys
    print(f"converted {state.reference_keys} reference keys, passed through {passed} mmsoft keys, "
          f"dropped {len(state.dropped)}: {', '.join(state.dropped) or 'none'}")
    if state.unexpected:
        print(f"skipped {len(state.unexpected)} unknown keys: {', '.join(state.unexpected)}")
    print(f"saved {len(state)} tensors to {args.dst}")


if __name__ == "__main__":
    main()
