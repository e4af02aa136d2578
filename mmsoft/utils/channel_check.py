"""Fail early, naming the right values, when a neck or decode head does not fit a SOFT backbone's channels, or the
data preprocessor does not fit its input channels.

Swapping SOFT into an mmdet / mmseg config means changing the ``in_channels`` of the module that reads the backbone
(mmdet: the neck, e.g. FPN; mmseg: the neck if there is one, else the decode and auxiliary heads). Forgetting it
otherwise shows up only in the first forward as a convolution shape error that names neither the config key nor the
value to put there. :func:`check_backbone_channels` compares the built model against the backbone's outputs, and the
data preprocessor's per-channel mean / std against the backbone's ``in_channels`` (grayscale: 1, multispectral: any).
:func:`model_input_channels` is what the tools use instead of assuming RGB.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mmsoft.models import SOFT


def model_input_channels(model: nn.Module) -> int:
    """Channels of the images ``model`` (an mmdet / mmseg model, possibly wrapped, or a bare backbone) takes: the
    backbone's ``in_channels`` when it keeps one (``mmsoft.SOFT`` does), else the input channels of its first
    convolution (the stem or patch embedding of mmdet's / mmseg's ResNet, Swin, PVT, ...), else 3."""
    model = getattr(model, "module", model)
    backbone = getattr(model, "backbone", model)
    channels = getattr(backbone, "in_channels", None)
    if isinstance(channels, int):
        return channels
    first_conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    return first_conv.in_channels if first_conv is not None else 3


def _check_preprocessor(model: nn.Module, in_channels: int, desc: str) -> list[str]:
    """The data preprocessor normalises per channel: its mean / std need one value per input channel, or one value for
    all of them (mmengine's preprocessors take 1 or 3 values)."""
    pre = getattr(model, "data_preprocessor", None)
    fits = "1 value (or 3)" if in_channels == 3 else (
        "1 value" if in_channels == 1 else "1 value shared by all channels (mmengine's preprocessors take 1 or 3)")
    problems = []
    for name in ("mean", "std"):
        value = getattr(pre, name, None)
        if isinstance(value, Tensor) and value.numel() not in (1, in_channels):
            problems.append(f"data_preprocessor {name} has {value.numel()} values {value.flatten().tolist()} but "
                            f"{desc} takes {in_channels}-channel images; set data_preprocessor.{name} to {fits}"
                            + (" and LoadImageFromFile color_type='grayscale'" if in_channels == 1 else "")
                            + f", or model.backbone.in_channels={value.numel()}")
    return problems


def _soft_outputs(backbone: nn.Module) -> tuple[list[int], str] | None:
    """Output channels and a description of an ``mmsoft.SOFT`` backbone; None for other backbones."""
    if not isinstance(backbone, SOFT):
        return None
    outs = [backbone.embed_dims[i] for i in backbone.out_indices]
    keys = ("embed_dims", "num_heads", "depths")
    arch = next((name for name, preset in SOFT.arch_zoo.items()
                 if all(list(preset[k]) == list(backbone.arch_settings[k]) for k in keys)), None)
    name = f"arch={arch!r}" if arch else f"embed_dims={backbone.embed_dims}"
    return outs, f"mmsoft.SOFT({name}) outputs {outs} for out_indices {backbone.out_indices}"


def _check_neck(neck: nn.Module, outs: list[int], desc: str) -> list[str]:
    if isinstance(neck, nn.Sequential):  # mmdet builds a list of necks as nn.Sequential: the first reads the backbone
        neck = neck[0]
    in_channels = getattr(neck, "in_channels", None)
    if isinstance(in_channels, Sequence) and list(in_channels) != outs:
        return [f"{type(neck).__name__} in_channels {list(in_channels)} do not match {desc}; "
                f"set neck.in_channels={outs}"]
    if isinstance(in_channels, int) and len(outs) == 1 and in_channels != outs[0]:
        return [f"{type(neck).__name__} in_channels {in_channels} does not match {desc}; "
                f"set neck.in_channels={outs[0]}"]
    return []


def _check_head(head: nn.Module, key: str, outs: list[int], desc: str) -> list[str]:
    """mmseg decode heads: ``in_index`` selects backbone outputs, ``input_transform`` says how they are combined."""
    in_channels, in_index = getattr(head, "in_channels", None), getattr(head, "in_index", None)
    if in_channels is None or in_index is None:
        return []
    indices = list(in_index) if isinstance(in_index, Sequence) else [in_index]
    bad = [i for i in indices if not -len(outs) <= i < len(outs)]
    if bad:
        return [f"{type(head).__name__} ({key}) in_index {in_index} selects outputs that {desc} does not have; "
                f"use indices in [0, {len(outs) - 1}]"]
    want = [outs[i] for i in indices]
    name = type(head).__name__
    transform = getattr(head, "input_transform", None)
    if transform == "resize_concat":  # mmseg stores the concatenated width
        if in_channels != sum(want):
            return [f"{name} ({key}) concatenates {sum(want)} channels from {desc} at in_index {in_index}, not "
                    f"{in_channels}; set {key}.in_channels={want}"]
    elif isinstance(in_index, Sequence):
        if not isinstance(in_channels, Sequence) or list(in_channels) != want:
            return [f"{name} ({key}) in_channels {in_channels} do not match {desc} at in_index {in_index}; "
                    f"set {key}.in_channels={want}"]
    elif in_channels != want[0]:
        return [f"{name} ({key}) in_channels {in_channels} does not match {desc}: in_index {in_index} has "
                f"{want[0]} channels; set {key}.in_channels={want[0]}"]
    return []


def check_backbone_channels(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the values to set when the neck (or, without a neck, the mmseg decode/auxiliary
    heads) of a built mmdet / mmseg model does not fit its ``mmsoft.SOFT`` backbone's outputs, or the data
    preprocessor's mean / std do not have one value per input channel of the backbone.

    Models with another backbone pass unchecked. Wrapped models (``model.module``) are unwrapped.
    """
    model = getattr(model, "module", model)
    found = _soft_outputs(getattr(model, "backbone", None))
    if found is None:
        return
    outs, desc = found
    in_channels = model.backbone.in_channels
    problems = _check_preprocessor(model, in_channels, f"mmsoft.SOFT(in_channels={in_channels})")
    neck = getattr(model, "neck", None)
    if isinstance(neck, nn.Module):
        problems += _check_neck(neck, outs, desc)
    else:
        for key in ("decode_head", "auxiliary_head"):
            heads = getattr(model, key, None)
            if isinstance(heads, nn.ModuleList):
                for i, head in enumerate(heads):
                    problems += _check_head(head, f"{key}[{i}]", outs, desc)
            elif isinstance(heads, nn.Module):
                problems += _check_head(heads, key, outs, desc)
    if problems:
        raise ValueError("the model does not fit its SOFT backbone:\n  " + "\n  ".join(problems))
