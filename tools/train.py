"""Train a detector (mmdet config) or segmentor (mmseg config) with an mmsoft backbone.

Same command line as mmdet's tools/train.py; the config's ``default_scope`` picks the codebase. ``load_from`` and
``--resume`` checkpoints are loaded weights-only and verified; a resumed one must fit the model exactly, a
``load_from`` one must not miss tensors (other shapes, e.g. a head for other classes, are only warned about).
``--amp`` uses mmengine's float16 AmpOptimWrapper on a GPU and bfloat16 CPU autocast without one.
"""
import argparse
import sys

from mmengine.config import Config
from mmengine.optim import AmpOptimWrapper

from mmsoft.checkpoint import CheckpointError
from mmsoft.utils import CheckpointFitHook
from mmsoft.utils.dist_env import close_distributed
from mmsoft.utils.run_setup import add_run_arguments, build_runner, load_run_config, parse_run_arguments, prepare_run


def parse_args() -> argparse.Namespace:
    """Parse the mmdet-style command line."""
    parser = argparse.ArgumentParser(description="Train a model with an mmsoft backbone")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models")
    parser.add_argument("--amp", action="store_true", default=False,
                        help="automatic mixed precision: float16 with loss scaling on a GPU, bfloat16 on the CPU")
    parser.add_argument("--auto-scale-lr", action="store_true", help="scale the lr by the real batch size")
    parser.add_argument("--resume", nargs="?", type=str, const="auto",
                        help="resume from this checkpoint; without a path, from the latest in work_dir")
    add_run_arguments(parser, "override config settings, key=value pairs, e.g. train_cfg.max_iters=10")
    return parse_run_arguments(parser)


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line overrides."""
    cfg = load_run_config(args)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    use_cpu_amp_without_accelerator(cfg)
    if args.auto_scale_lr:
        if "auto_scale_lr" not in cfg or "base_batch_size" not in cfg.auto_scale_lr:
            raise RuntimeError("--auto-scale-lr needs auto_scale_lr.base_batch_size in the config")
        cfg.auto_scale_lr.enable = True
    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def use_cpu_amp_without_accelerator(cfg: Config) -> None:
    """mmengine's AmpOptimWrapper (``--amp``, or set in the config) stops without a GPU / NPU / MLU / MUSA: use
    bfloat16 autocast on the CPU instead (``mmsoft.CPUAmpOptimWrapper``), and say so."""
    from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
    from mmengine.logging import print_log

    wrapper = cfg.get("optim_wrapper", None)
    if not wrapper or wrapper.get("type") not in ("AmpOptimWrapper", AmpOptimWrapper):
        return
    if is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available():
        return
    wrapper.type = "mmsoft.CPUAmpOptimWrapper"
    print_log("no GPU: mixed precision runs as bfloat16 autocast on the CPU (mmsoft.CPUAmpOptimWrapper, no loss "
              "scaling); it can save activation memory, but on a CPU it is often slower than float32", logger="current")


def main() -> None:
    """Build the runner from the config and train."""
    args = parse_args()
    cfg = build_config(args)
    prepare_run(cfg, "train_dataloader")
    # resumed checkpoints must fit exactly; load_from (fine-tuning) may differ in head shapes, e.g. other classes
    runner = build_runner(cfg, CheckpointFitHook(cfg.get("load_from"), allow_shape_mismatch=not cfg.get("resume")))
    try:
        runner.train()
    except CheckpointError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        close_distributed(synchronize=False)
        raise
    close_distributed()
