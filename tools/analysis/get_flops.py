"""Parameters and FLOPs of an mmdet or mmseg config, with the SOFT attention counted.

mmdet's / mmseg's get_flops conventions: batch 1, eval mode, the test-time network (``mode='tensor'``: backbone, neck
and heads, no post-processing; mmseg without the auxiliary head), randomly initialised weights, one multiply-add
counted as one FLOP (mmengine's FlopAnalyzer). Default input: 800 x 1280 for mmdet (the "1280 x 800" of detection
papers), 512 x 512 for mmseg; ``--shape H W`` (or ``--shape S``) for another size, rounded up to a multiple of 32.
The input has as many channels as the model takes (the backbone's ``in_channels``: 1 for grayscale, any number for
multispectral models).

mmengine's generic counter sees neither the SOFT attention's fused kernels nor its Newton-Schulz pseudo-inverse nor
``scaled_dot_product_attention``; mmsoft registers handles for them (mmsoft/ops/flops.py). The Newton iterations are
counted but not run (``--exact-newton`` runs them: same count, minutes on a CPU at detection size).

Example::

    python tools/analysis/get_flops.py configs/soft/retinanet_soft-t-norm_fpn_1x_coco.py
"""
from __future__ import annotations

import argparse

from mmengine.config import Config, DictAction
from mmengine.registry import MODELS, init_default_scope

from mmsoft.utils import prepare_scope
from mmsoft.utils.complexity import model_complexity

DEFAULT_SHAPES = {"mmdet": (800, 1280), "mmseg": (512, 512)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Count the parameters and FLOPs of a model config")
    parser.add_argument("config", help="config file path")
    parser.add_argument("--shape", type=int, nargs="+", help="input H W (or one size S for S x S)")
    parser.add_argument("--exact-newton", action="store_true",
                        help="run the Newton-Schulz iterations while tracing instead of only counting them")
    parser.add_argument("--show-table", action="store_true", help="print mmengine's per-module table")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config settings, key=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Build the config's model, count, print mmdet-style and return the numbers."""
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    scope = prepare_scope(cfg)
    init_default_scope(scope)
    if args.shape is None:
        shape = DEFAULT_SHAPES.get(scope, (512, 512))
    elif len(args.shape) in (1, 2):
        shape = (args.shape[0], args.shape[-1])
    else:
        raise ValueError(f"--shape takes H W or S, got {args.shape}")
    model = MODELS.build(cfg.model)
    result = model_complexity(model, scope, shape, exact_newton=args.exact_newton)
    h, w = result["input_shape"]
    split = ", ".join(f"{k} {v / 1e9:.2f}G" for k, v in sorted(result["flops_by_operator"].items(),
                                                                 key=lambda kv: -kv[1]))
    print("=" * 60)
    print(f"Config: {args.config}")
    print(f"Input shape: ({result['in_channels']}, {h}, {w})")
    print(f"Flops: {result['flops'] / 1e9:.1f}G (backbone {result['backbone_flops'] / 1e9:.1f}G)")
    print(f"Params: {result['params'] / 1e6:.1f}M (backbone {result['backbone_params'] / 1e6:.1f}M)")
    print(f"By operator: {split}")
    print("=" * 60)
    if args.show_table:
        from mmengine.analysis import complexity_stats_table
        print(complexity_stats_table(result["analyzer"], max_depth=3, show_param_shapes=False))
    return result


if __name__ == "__main__":
    main()
