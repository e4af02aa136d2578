"""Set-up shared by tools/train.py and tools/test.py for mmdet and mmseg configs alike."""
from __future__ import annotations

import importlib
import os.path as osp

from mmengine.config import Config

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
