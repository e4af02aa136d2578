"""Refuse a checkpoint that does not fit the model it is loaded into, naming the file, what is missing and what would
fit, instead of mmengine's warning after which a partly random model is evaluated or trained.

mmengine loads ``load_from`` / resume checkpoints and the inferencers' weights with ``strict=False``: a detector
checkpoint without its backbone, or one of another architecture, only logs a warning and ``tools/test.py`` then
evaluates random weights. :func:`check_checkpoint_fits` is the strict check; :class:`CheckpointFitHook` runs it in the
runner right after a checkpoint is read (``after_load_checkpoint``), before any weight is copied.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from mmengine.hooks import Hook
from mmengine.logging import print_log
from torch import Tensor, nn

from mmsoft.checkpoint import CheckpointError, describe_shape_mismatch

from .channel_check import model_input_channels

_PREFIX_RE = re.compile(r"^module\.")  # what mmengine's runner strips (revise_keys)


def checkpoint_state_dict(checkpoint: Mapping) -> dict[str, Tensor]:
    """The model weights inside a loaded checkpoint, as mmengine reads them: ``checkpoint['state_dict']`` (else the
    checkpoint itself) with a leading ``module.`` (DDP) stripped."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"holds no state dict (a {type(checkpoint).__name__})")
    return {_PREFIX_RE.sub("", str(k)): v for k, v in state.items()}


def _by_module(keys: list[str], total: Counter) -> str:
    """``'backbone: all 164 tensors (backbone.stages.0..., ...), neck: 2 of 12 (...)'``."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.split(".", 1)[0], []).append(key)
    parts = []
    for top, names in groups.items():
        count = f"all {len(names)}" if len(names) == total[top] else f"{len(names)} of {total[top]}"
        more = f", ... ({len(names) - 3} more)" if len(names) > 3 else ""
        parts.append(f"{top}: {count} tensors ({', '.join(names[:3])}{more})")
    return "; ".join(parts)


def checkpoint_fit_problems(model: nn.Module, state: Mapping[str, Tensor],
                            allow_shape_mismatch: bool = False) -> tuple[list[str], list[str]]:
    """(errors, warnings) about loading ``state`` into ``model`` (unwrapped from ``model.module``).

    Errors: model tensors the state lacks (BatchNorm's ``num_batches_tracked`` aside, which torch fills in), shape
    mismatches (warnings instead with ``allow_shape_mismatch``, e.g. fine-tuning a detector to other classes), and no
    common key at all. Warnings: tensors the model does not have.
    """
    model = getattr(model, "module", model)
    target = model.state_dict()
    in_channels = model_input_channels(model)
    counted = [k for k in target if not k.endswith("num_batches_tracked")]  # torch fills these in when absent
    total = Counter(k.split(".", 1)[0] for k in counted)
    missing = [k for k in counted if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [describe_shape_mismatch(k, tuple(v.shape), tuple(target[k].shape), in_channels)
              for k, v in state.items() if k in target and isinstance(v, Tensor) and v.shape != target[k].shape]
    errors, warnings = [], []
    if not any(k in target for k in state):
        tops = sorted({str(k).split(".", 1)[0] for k in state})[:8]
        errors.append(f"none of its {len(state)} tensors belongs to this model (its keys start with {tops}, the "
                      f"model's with {sorted(total)}): it was saved from another model")
        return errors, warnings
    if missing:
        errors.append(f"it lacks {len(missing)} of the model's {len(counted)} tensors: {_by_module(missing, total)}")
    if shapes:
        text = f"{len(shapes)} tensors have other shapes: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5
                                                                                      else "")
        (warnings if allow_shape_mismatch else errors).append(text)
    if unexpected:
        more = f", ... ({len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        warnings.append(f"{len(unexpected)} of its tensors are not in the model: {', '.join(unexpected[:5])}{more}")
    return errors, warnings


def check_checkpoint_fits(model: nn.Module, checkpoint: Mapping, filename: str,
                          allow_shape_mismatch: bool = False) -> None:
    """Raise :class:`CheckpointError` naming ``filename`` when ``checkpoint`` does not fit ``model`` (see
    :func:`checkpoint_fit_problems`); log the warnings otherwise."""
    try:
        state = checkpoint_state_dict(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {filename} {err}") from None
    errors, warnings = checkpoint_fit_problems(model, state, allow_shape_mismatch)
    if errors:
        name = type(getattr(model, "module", model)).__name__
        raise CheckpointError(f"checkpoint {filename} does not fit the model {name} of this config: "
                              + "; ".join(errors + warnings)
                              + ". Use the checkpoint trained with this config (tools/train.py saves it in the work "
                              "dir), or a config that builds the model the checkpoint was saved from")
    for text in warnings:
        print_log(f"checkpoint {filename}: {text}", logger="current", level=30)


class CheckpointFitHook(Hook):
    """Runs :func:`check_checkpoint_fits` on every checkpoint the runner loads (``load_from`` and resume), before its
    weights are copied into the model. Register it with ``runner.register_hook(hook, 'VERY_HIGH')``.

    Args:
        filename: the checkpoint's name for messages (auto-resume finds it itself: then the latest in work_dir).
        allow_shape_mismatch: only warn about tensors of other shapes (fine-tuning with ``load_from``); resumed and
            evaluated checkpoints must fit exactly.
    """

    def __init__(self, filename: str | None = None, allow_shape_mismatch: bool = False) -> None:
        self.filename = filename
        self.allow_shape_mismatch = allow_shape_mismatch

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Check ``checkpoint`` against ``runner.model``; raises :class:`CheckpointError`."""
        filename = self.filename
        if filename is None:
            from mmengine.runner import find_latest_checkpoint

            filename = find_latest_checkpoint(runner.work_dir) or "(latest in work_dir)"
        check_checkpoint_fits(runner.model, checkpoint, filename, self.allow_shape_mismatch)
