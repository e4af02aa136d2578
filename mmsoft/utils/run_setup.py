"""Set-up shared by tools/train.py and tools/test.py for mmdet and mmseg configs alike: the launcher options, the
config with the command-line overrides, the scope, dataset and checkpoint-loading set-up, and the runner with mmsoft's
checks."""
from __future__ import annotations

import argparse
import importlib
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmsoft.checkpoint import use_safe_checkpoint_loading

from .channel_check import check_backbone_channels
from .dist_env import setup_cpu_distributed

DEMO_HINT = ("To try mmsoft without downloading a dataset, use the bundled demo instead:\n"
             "  python tools/misc/make_demo_data.py\n"
             "  python tools/train.py configs/demo/retinanet_soft-t-norm_fpn_demo.py")


def prepare_scope(cfg: Config) -> str:
    """Register the modules of the config's ``default_scope`` (mmdet or mmseg) and mmsoft's own.

    Returns the scope name. mmdet and mmseg configs differ only in this scope, which is why one
    train/test script serves both.
    """
    scope = cfg.get("default_scope", None)
    if scope is None:
        raise ValueError("the config has no default_scope; inherit from an mmdet:: or mmseg:: "
                         "default_runtime.py (or set default_scope='mmdet' / 'mmseg')")
    try:
        utils = importlib.import_module(f"{scope}.utils")
    except ImportError as err:
        raise ImportError(f"default_scope={scope!r} but the package {scope!r} cannot be imported: {err}") from err
    if hasattr(utils, "register_all_modules"):
        utils.register_all_modules(init_default_scope=False)
    importlib.import_module("mmsoft")
    return scope


def _dataset_cfgs(cfg: dict):
    """Yield the leaf dataset configs inside (possibly wrapped) dataset configs."""
    if cfg is None:
        return
    if isinstance(cfg, (list, tuple)):
        for item in cfg:
            yield from _dataset_cfgs(item)
        return
    if "datasets" in cfg:
        yield from _dataset_cfgs(cfg["datasets"])
    elif "dataset" in cfg:
        yield from _dataset_cfgs(cfg["dataset"])
    else:
        yield cfg


def check_dataset_exists(cfg: Config, splits: tuple[str, ...] = ("train_dataloader",)) -> None:
    """Fail early, naming the expected path and the demo alternative, when a dataset is missing."""
    for split in splits:
        loader = cfg.get(split, None)
        if not loader:
            continue
        for ds in _dataset_cfgs(loader.get("dataset")):
            root = ds.get("data_root", "") or ""
            ann = ds.get("ann_file", "") or ""
            expected = [root] if root else []
            if ann:
                expected.append(ann if osp.isabs(ann) else osp.join(root, ann))
            missing = [p for p in expected if p and not osp.exists(p)]
            if missing:
                raise FileNotFoundError(
                    f"{ds.get('type', 'dataset')} for {split} not found: expected {missing[-1]!r} "
                    f"(data_root={root!r}). Put the dataset there (mmdet/mmseg docs: 'Prepare datasets') or point "
                    f"the config at it with --cfg-options {split}.dataset.data_root=PATH.\n{DEMO_HINT}")


def add_run_arguments(parser: argparse.ArgumentParser, cfg_options_help: str) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local_rank``, as mmdet's tools take them."""
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help=cfg_options_help)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def parse_run_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``LOCAL_RANK`` from ``--local_rank`` unless the launcher set it."""
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def load_run_config(args: argparse.Namespace) -> Config:
    """``args.config`` with ``--launcher``, ``--cfg-options`` and the work dir (``--work-dir``, else the config's,
    else ``work_dirs/<config name>``) applied."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    return cfg


def prepare_run(cfg: Config, split: str) -> str:
    """Before the runner is built: register the config's scope (returned), stop naming the expected path when the
    ``split`` dataloader's dataset is missing, load every checkpoint weights-only and verified, and set up CPU
    distributed training when launched without GPUs."""
    scope = prepare_scope(cfg)
    try:
        check_dataset_exists(cfg, (split,))
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    use_safe_checkpoint_loading()
    setup_cpu_distributed(cfg)
    return scope


def build_runner(cfg: Config, fit_hook: Hook) -> Runner:
    """The config's runner, its model checked against its SOFT backbone's channels, with ``fit_hook`` (the checkpoint
    fit check) registered first."""
    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    check_backbone_channels(runner.model)
    runner.register_hook(fit_hook, priority="VERY_HIGH")
    return runner
