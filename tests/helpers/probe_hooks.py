"""Test-only mmengine hooks, imported by the tmp configs of the distributed and resume tests.

``ProbeHook`` records every rank's exact per-iteration losses (mmengine logs rank 0's, rounded),
saves every rank's final weights (mmengine saves rank 0's) and records the norm layer types of the
wrapped model; with ``hang_after_iter=k`` it blocks after iteration k (after the checkpoint hook has
saved ``iter_k.pth``) so that a test can SIGKILL the process at a known point.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS, MODEL_WRAPPERS


def norm_layer_types(model: torch.nn.Module) -> list[str]:
    """Sorted class names of the batch-norm layers in ``model``."""
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)})


@MODEL_WRAPPERS.register_module()
class NormProbeWrapper(torch.nn.Module):
    """A do-nothing model wrapper that records the norm layers mmengine hands it after its SyncBN handling.

    DDP refuses SyncBN layers in CPU modules, so on CPU this is where the conversion can be seen.
    """

    def __init__(self, module: torch.nn.Module, out_dir: str) -> None:
        super().__init__()
        self.module = module
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        info = dict(norms=norm_layer_types(module), world_size=torch.distributed.get_world_size())
        (Path(out_dir) / f"wrapped_rank{get_rank()}.json").write_text(json.dumps(info))


@HOOKS.register_module()
class ProbeHook(Hook):
    """Per-rank loss log, final weights and norm layer types under ``out_dir``."""

    priority = "LOWEST"  # after CheckpointHook (VERY_LOW): iter_k.pth is complete when we hang

    def __init__(self, out_dir: str, hang_after_iter: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.hang_after_iter = hang_after_iter
        self._avg_factor: float | None = None

    def before_train(self, runner) -> None:
        """Record the wrapper and the norm layer types each rank trains with."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._avg_factor = None
        loss_cls = getattr(getattr(model, "bbox_head", None), "loss_cls", None)
        if loss_cls is not None:  # mmdet normalises by the rank's own number of positive anchors
            loss_cls.register_forward_pre_hook(self._catch_avg_factor, with_kwargs=True)
        info = dict(wrapper=type(runner.model).__name__, norms=norm_layer_types(model), world_size=runner.world_size,
                    start_iter=runner.iter)
        (self.out_dir / f"setup_rank{get_rank()}_start{runner.iter}.json").write_text(json.dumps(info))

    def _catch_avg_factor(self, module, args, kwargs) -> None:
        """Remember the loss normaliser (the number of positive anchors of this rank's batch)."""
        self._avg_factor = float(kwargs.get("avg_factor") or 0.0)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """Append this rank's loss of iteration ``batch_idx + 1``; hang there if asked to."""
        images = [Path(s.img_path).name for s in data_batch["data_samples"]]
        record = dict(iter=batch_idx + 1, loss=float(outputs["loss"].detach()), images=images,
                      avg_factor=self._avg_factor)
        with open(self.out_dir / f"losses_rank{get_rank()}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.hang_after_iter is not None and batch_idx + 1 == self.hang_after_iter:
            (self.out_dir / "hanging").write_text(str(os.getpid()))
            while True:  # the test kills us here
                time.sleep(1)

    def after_train(self, runner) -> None:
        """Save this rank's final state dict."""
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save(model.state_dict(), self.out_dir / f"final_rank{get_rank()}.pth")
