"""Evaluate a checkpoint of an mmdet or mmseg config with an mmsoft backbone (mmdet's CLI).

The checkpoint is loaded weights-only and verified (mmsoft.checkpoint) and must fit the model exactly
(no missing tensors, no other shapes); a damaged or unfitting checkpoint, or an evaluation without metrics, stops
with an error naming the file and what is wrong.
"""
import argparse
import sys

from mmsoft.checkpoint import CheckpointError
from mmsoft.utils import CheckpointFitHook
from mmsoft.utils.dist_env import close_distributed
from mmsoft.utils.run_setup import add_run_arguments, build_runner, load_run_config, parse_run_arguments, prepare_run


def parse_args() -> argparse.Namespace:
    """Parse the mmdet-style command line."""
    parser = argparse.ArgumentParser(description="Test (and evaluate) a model with an mmsoft backbone")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="the dir to save the evaluation metrics")
    parser.add_argument("--out", help="dump predictions to this pickle file for offline evaluation")
    parser.add_argument("--show-dir", help="save visualised predictions under work_dir/timestamp/SHOW_DIR")
    add_run_arguments(parser, "override config settings, key=value pairs")
    return parse_run_arguments(parser)


def main() -> None:
    """Build the runner, load the checkpoint and run the test loop."""
    args = parse_args()
    cfg = load_run_config(args)
    cfg.load_from = args.checkpoint
    scope = prepare_run(cfg, "test_dataloader")
    if args.show_dir:
        vis_hook = cfg.default_hooks.get("visualization")
        if vis_hook is None:
            raise RuntimeError("--show-dir needs a 'visualization' hook in default_hooks")
        vis_hook["draw"] = True
        if scope == "mmdet":
            vis_hook["test_out_dir"] = args.show_dir
        else:
            vis_hook["interval"] = 1
            cfg.visualizer["save_dir"] = args.show_dir
    if args.out is not None:
        if not args.out.endswith((".pkl", ".pickle")):
            raise ValueError(f"--out must be a .pkl/.pickle file, got {args.out}")
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(cfg.test_evaluator, dict) else cfg.test_evaluator
        cfg.test_evaluator.append(dict(type="DumpResults", out_file_path=args.out))
    runner = build_runner(cfg, CheckpointFitHook(args.checkpoint))  # evaluate only what fits exactly
    try:
        metrics = runner.test()
    except CheckpointError as err:
        sys.exit(f"error: {err}")
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
    if not metrics and not any(e.get("format_only") for e in evaluators):
        sys.exit(f"error: the evaluation of {args.checkpoint} produced no metrics: the model predicted nothing to "
                 "evaluate (mmdet's CocoMetric reports nothing when no box passes the score threshold), see the "
                 "log above; an untrained or broken checkpoint, or a test_cfg score threshold too high for it")


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        close_distributed(synchronize=False)
        raise
    close_distributed()
