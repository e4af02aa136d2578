"""Convert the reference SOFT / SOFT-Norm ImageNet checkpoints (github fudan-zvg/SOFT, timm-style keys) to
:class:`mmsoft.models.SOFT` parameter names, and load them into a backbone.

Reference name (``block{k}`` / ``patch_embed{k}`` / ``pos_embed{k}`` count stages from 1) -> mmsoft name
(``stages.{k-1}``):

========================================================  ==========================================
``patch_embed{k}.proj.{j}.*``                              ``stages.{k-1}.patch_embed.{j}.*``
``pos_embed{k}`` (``pos_embed4``: class-token slot 0 kept) ``stages.{k-1}.pos_embed``
``block{k}.{j}.att.mha.W_q`` / ``W_v`` / ``ff``            ``stages.{k-1}.blocks.{j}.attn.q`` / ``v`` / ``proj``
``block{k}.{j}.att.mha.attn.Qlandmark_op``                 ``...attn.landmark_conv``
``block{k}.{j}.att.mha.attn.Qnorm_act.0``                  ``...attn.landmark_norm``
``block{k}.{j}.att.mha.attn.conv``                         ``...attn.v_conv``
``block{k}.{j}.att.norm1`` / ``norm2``                     ``...norm1`` / ``norm2``
``block{k}.{j}.att.ff1`` / ``ff2``                         ``...mlp.0`` / ``mlp.3``
``block4.{j}.norm1`` / ``norm2`` / ``attn.{q,kv,proj}``    ``stages.3.blocks.{j}.`` same names
``block4.{j}.mlp.fc1`` / ``mlp.fc2``                       ``stages.3.blocks.{j}.mlp.0`` / ``mlp.3``
``norm``                                                   ``stages.3.norm``
``cls_token``                                              ``stages.3.cls_token``
``head.*``                                                 dropped (classification only)
========================================================  ==========================================

Keys that are already mmsoft-style (``stages.*``) pass through unchanged. The class token and its position slot are
kept by default (``with_cls_token=True``): a backbone built with ``with_cls_token=True`` then computes exactly the
reference model's stage maps; :func:`load_soft_pretrained` drops both (and says so) for ``with_cls_token=False``.
"""
from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor, nn

from mmsoft.checkpoint import describe_shape_mismatch, load_checkpoint_safely

# Containers a state dict may be wrapped in, in order of preference. The reference trains with
# timm's CheckpointSaver and model EMA on (main.py: --model-ema defaults to True) and evaluates the EMA
# weights, so ``state_dict_ema`` is the model its published accuracy belongs to.
_CONTAINER_KEYS = ("state_dict_ema", "state_dict", "model", "module")
_STRIP_PREFIXES = ("module.", "backbone.")

# Inside block{1,2,3}.{j}: reference module path -> mmsoft module path.
_SOFT_BLOCK_NAMES = {
    "att.mha.W_q": "attn.q",
    "att.mha.W_v": "attn.v",
    "att.mha.ff": "attn.proj",
    "att.mha.attn.Qlandmark_op": "attn.landmark_conv",
    "att.mha.attn.Qnorm_act.0": "attn.landmark_norm",
    "att.mha.attn.conv": "attn.v_conv",
    "att.norm1": "norm1",
    "att.norm2": "norm2",
    "att.ff1": "mlp.0",
    "att.ff2": "mlp.3",
}
# Inside block4.{j} (PVT-style softmax blocks).
_SOFTMAX_BLOCK_NAMES = {
    "norm1": "norm1",
    "attn.q": "attn.q",
    "attn.kv": "attn.kv",
    "attn.proj": "attn.proj",
    "norm2": "norm2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.3",
}
_BLOCK_RE = re.compile(r"block([1-4])\.(\d+)\.(.+)\.(weight|bias)")
_PATCH_EMBED_RE = re.compile(
    r"patch_embed([1-4])\.proj\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)")
_POS_EMBED_RE = re.compile(r"pos_embed([1-4])")
_NORM_RE = re.compile(r"norm\.(weight|bias)")
_DROPPED_RE = re.compile(r"head\..+")
_CLS_TOKEN_RE = re.compile(r"cls_token")
_STAGE_CLS_RE = re.compile(r"stages\.\d+\.cls_token")
_STAGE_POS_RE = re.compile(r"stages\.\d+\.pos_embed")
_STAGE_BLOCK_RE = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\..+")
_STAGE_KEY_RE = re.compile(r"stages\.(\d+)\..+")


class SOFTStateDict(OrderedDict):
    """A converted state dict that also records what the conversion dropped and did not understand.

    ``dropped``: source keys deliberately left out (classifier head, keys outside ``backbone.`` in a whole-detector
    checkpoint; the class token and its position slot with ``with_cls_token=False``). ``unexpected``: source keys the
    converter does not know (only with ``strict=False``). ``reference_keys``: how many keys were renamed
    from the reference format (0 for an mmsoft-format checkpoint).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dropped: list[str] = []
        self.unexpected: list[str] = []
        self.reference_keys = 0


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def unwrap_state_dict(ckpt: Mapping, use_ema: bool = True) -> Mapping[str, Tensor]:
    """The tensor mapping inside a checkpoint (``state_dict_ema``/``state_dict``/``model``/``module`` unwrapped)."""
    obj = ckpt
    for _ in range(4):  # containers may nest, e.g. {'model': {'state_dict': ...}}
        if not isinstance(obj, Mapping):
            break
        if _is_state_dict(obj):
            return obj
        keys = [k for k in _CONTAINER_KEYS
                if k in obj and isinstance(obj[k], Mapping) and (use_ema or k != "state_dict_ema")]
        if not keys:
            break
        obj = obj[keys[0]]
    top = sorted(map(str, ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise ValueError(f"cannot find a state dict in this checkpoint (top-level keys: {top}); expected a mapping of "
                     f"tensors, possibly inside one of {list(_CONTAINER_KEYS)}. Pass the model weights file, not "
                     "a log or a config")


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


def num_extra_tokens(name: str, pos: Tensor) -> int:
    """How many leading non-grid slots (a class token's) a ``(1, [1 +] g*g, C)`` position embedding holds: 0 or 1."""
    if pos.dim() != 3 or pos.shape[0] != 1:
        raise ValueError(f"{name}: expected a (1, N, C) position embedding, got {tuple(pos.shape)}")
    n = pos.shape[1]
    if _square_side(n) is not None:
        return 0
    if _square_side(n - 1) is not None:
        return 1
    raise ValueError(f"{name}: {n} positions are neither a square grid nor a square grid plus a class-token slot; "
                     "this is not a SOFT position embedding")


def _convert_reference_key(key: str) -> str | None:
    """The mmsoft name of a reference key, or None when the key is not a known reference parameter."""
    if m := _BLOCK_RE.fullmatch(key):
        stage, idx, module, leaf = int(m[1]) - 1, m[2], m[3], m[4]
        table = _SOFTMAX_BLOCK_NAMES if stage == 3 else _SOFT_BLOCK_NAMES
        if module in table:
            return f"stages.{stage}.blocks.{idx}.{table[module]}.{leaf}"
        return None
    if m := _PATCH_EMBED_RE.fullmatch(key):
        return f"stages.{int(m[1]) - 1}.patch_embed.{m[2]}.{m[3]}"
    if m := _POS_EMBED_RE.fullmatch(key):
        return f"stages.{int(m[1]) - 1}.pos_embed"
    if m := _NORM_RE.fullmatch(key):
        return f"stages.3.norm.{m[1]}"
    if _CLS_TOKEN_RE.fullmatch(key):
        return "stages.3.cls_token"
    return None


def soft_convert(ckpt: Mapping, strict: bool = True, prefix: str | None = None,
                 use_ema: bool = True, with_cls_token: bool = True) -> SOFTStateDict:
    """Map a reference SOFT checkpoint (or state dict) to mmsoft ``SOFT`` names; mmsoft keys pass through.

    Args:
        ckpt: a checkpoint as loaded (``state_dict_ema``/``state_dict``/``model``/``module`` wrappers are
            unwrapped) or a bare state dict.
        strict: raise ``ValueError`` on a key that is neither a known reference name, an mmsoft name nor
            a documented drop; with ``False`` such keys are listed in ``result.unexpected`` instead.
        prefix: take only keys under this prefix (e.g. ``'backbone.'``) and strip it; by default
            ``module.`` and then ``backbone.`` prefixes are stripped, and when some keys carry ``backbone.``
            the others (neck, heads) are dropped.
        use_ema: prefer the EMA weights (``state_dict_ema``) when the checkpoint has them.
        with_cls_token: keep the stage-4 class token (``stages.3.cls_token``) and its position slot, for a backbone
            with ``with_cls_token=True`` (the reference function); False drops both (listed in ``dropped``).
    """
    state: Mapping[str, Tensor] = unwrap_state_dict(ckpt, use_ema=use_ema)
    result = SOFTStateDict()
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."
        selected = _strip_prefix(state, prefix)
        if not selected:
            raise ValueError(f"no key of the checkpoint starts with prefix {prefix!r} (first keys: "
                             f"{list(state)[:5]}); fix or remove the prefix")
        result.dropped += [k for k in state if not k.startswith(prefix)]
        state = selected
    else:
        for p in _STRIP_PREFIXES:
            if any(k.startswith(p) for k in state):
                result.dropped += [k for k in state if not k.startswith(p)]
                state = _strip_prefix(state, p)

    for key, value in state.items():
        if key.startswith("stages."):  # already mmsoft-style
            result[key] = value
            continue
        if _DROPPED_RE.fullmatch(key):
            result.dropped.append(key)
            continue
        new_key = _convert_reference_key(key)
        if new_key is None:
            if strict:
                raise ValueError(f"soft_convert: unknown key {key!r} (shape {tuple(value.shape)}); it is neither a "
                                 "reference SOFT parameter nor an mmsoft one. Check that this is a SOFT checkpoint, "
                                 "or call soft_convert(..., strict=False) to skip and list such keys")
            result.unexpected.append(key)
            continue
        if new_key in result:
            raise ValueError(f"soft_convert: {key!r} and another key both map to {new_key!r}; the checkpoint mixes "
                             "reference and mmsoft names for the same parameter")
        result[new_key] = value
        result.reference_keys += 1
    if not with_cls_token:
        drop_class_tokens(result)
    return result


def drop_class_tokens(state: SOFTStateDict) -> None:
    """Remove, in place, the class token and its position slot of every stage (recorded in ``state.dropped``)."""
    for key in list(state):
        if _STAGE_CLS_RE.fullmatch(key):
            del state[key]
            state.dropped.append(key)
        elif _STAGE_POS_RE.fullmatch(key) and num_extra_tokens(key, state[key]):
            state[key] = state[key][:, 1:]
            state.dropped.append(f"{key}[:, 0] (class-token slot)")


def resize_pos_embed(pos: Tensor, src_grid: int | Sequence[int], dst_grid: int | Sequence[int]) -> Tensor:
    """Resize a ``(1, Hs*Ws, C)`` position embedding to ``(1, Hd*Wd, C)`` (bilinear, align_corners=False)."""
    src = (src_grid, src_grid) if isinstance(src_grid, int) else tuple(src_grid)
    dst = (dst_grid, dst_grid) if isinstance(dst_grid, int) else tuple(dst_grid)
    if pos.dim() != 3 or pos.shape[1] != src[0] * src[1]:
        raise ValueError(f"position embedding of shape {tuple(pos.shape)} does not hold a {src[0]}x{src[1]} grid")
    if src == dst:
        return pos
    grid = pos.reshape(pos.shape[0], src[0], src[1], pos.shape[2]).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=dst, mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(pos.dtype).contiguous()


def fit_pos_embeds(state: SOFTStateDict, model: nn.Module) -> list[str]:
    """Fit, in place, each stage's position embedding (and class token) in ``state`` to ``model``'s stages.

    A class token the model does not have is dropped with its position slot (recorded in ``state.dropped``); the grid
    part is resized bilinearly to the model's ``pretrain_img_size`` grid. Returns notes on what was resized. Raises
    ``ValueError`` when the checkpoint lacks a class token the model has (``with_cls_token=True``).
    """
    notes = []
    for i, stage in enumerate(model.stages):
        key = f"stages.{i}.pos_embed"
        if key not in state:
            continue
        pos = state[key]
        extra = num_extra_tokens(key, pos)
        if extra > stage.num_extra_tokens:
            pos = pos[:, extra:]
            state.dropped.append(f"{key}[:, 0] (class-token slot; the backbone has with_cls_token=False)")
            if state.pop(f"stages.{i}.cls_token", None) is not None:
                state.dropped.append(f"stages.{i}.cls_token (the backbone has with_cls_token=False)")
            extra = 0
        elif extra < stage.num_extra_tokens:
            raise ValueError(f"{key}: the checkpoint has no class-token slot, but this backbone has "
                             "with_cls_token=True; set with_cls_token=False for a checkpoint trained without it")
        grid = pos[:, extra:]
        src, dst = _square_side(grid.shape[1]), stage.pos_grid
        if src != dst and pos.shape[2] == stage.pos_embed.shape[2]:
            grid = resize_pos_embed(grid, src, dst)
            notes.append(f"{key} {src}x{src} -> {dst}x{dst}")
        state[key] = torch.cat([pos[:, :extra], grid], dim=1) if extra else grid
    return notes


def describe_arch(state: Mapping[str, Tensor]) -> dict:
    """The SOFT architecture an mmsoft-named state dict was made for: ``embed_dims``, ``depths`` and ``num_heads``
    per stage as far as the weights tell (stage-4 heads assume head dim 32, as every published model)."""
    stages = sorted({int(m[1]) for k in state if (m := _STAGE_KEY_RE.fullmatch(k))})
    depths = [0] * (max(stages) + 1 if stages else 0)
    for key in state:
        if m := _STAGE_BLOCK_RE.fullmatch(key):
            depths[int(m[1])] = max(depths[int(m[1])], int(m[2]) + 1)
    embed_dims, num_heads = [], []
    for i in range(len(depths)):
        pos = state.get(f"stages.{i}.pos_embed")
        embed_dims.append(int(pos.shape[-1]) if pos is not None else None)
        v_conv = state.get(f"stages.{i}.blocks.0.attn.v_conv.weight")
        heads = int(v_conv.shape[0]) if v_conv is not None else None
        num_heads.append(heads if heads is not None or embed_dims[-1] is None else embed_dims[-1] // 32)
    return dict(embed_dims=embed_dims, num_heads=num_heads, depths=depths)


def arch_hint(state: Mapping[str, Tensor], model: nn.Module) -> str:
    """A sentence naming the ``arch`` that fits the checkpoint ``state``, for error messages."""
    found = describe_arch(state)
    ours = {k: list(model.arch_settings[k]) for k in ("embed_dims", "num_heads", "depths")}
    if len(found["depths"]) < len(ours["depths"]):  # checkpoints of truncated backbones describe the stages they had
        ours = {k: v[:len(found["depths"])] for k, v in ours.items()}
    preset = [name for name, arch in model.arch_zoo.items()
              if all(list(arch[k][:len(found[k])]) == found[k] for k in found)]
    fits = f"arch='{preset[0]}'" if preset else f"arch=dict({', '.join(f'{k}={v}' for k, v in found.items())})"
    return (f"the checkpoint holds a SOFT with {', '.join(f'{k} {v}' for k, v in found.items())}; this backbone has "
            f"{', '.join(f'{k} {v}' for k, v in ours.items())}: build it with {fits}")


def _short(keys: Sequence[str], limit: int = 20) -> str:
    if not keys:
        return "none"
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_soft_pretrained(model: nn.Module, checkpoint: str, prefix: str | None = None, map_location: str = "cpu",
                         strict: bool = True) -> tuple[list[str], list[str]]:
    """Load a reference or mmsoft checkpoint into ``model`` (a SOFT backbone); returns (missing, unexpected).

    Nothing is dropped silently. Deliberate drops (classifier head, parts of a whole-detector checkpoint outside
    ``backbone.``, the class token for ``with_cls_token=False``, stages the backbone does not build because of its
    ``out_indices``) are logged. With ``strict`` (the default) any other key the model lacks, or parameter the
    checkpoint lacks, raises ``ValueError`` naming the ``arch`` the checkpoint fits; ``strict=False`` only warns.
    """
    ckpt = load_checkpoint_safely(checkpoint, map_location=map_location)  # weights-only, verified
    state = soft_convert(ckpt, strict=False, prefix=prefix)
    target = model.state_dict()
    if not any(k in target for k in state):
        raise ValueError(f"none of the {len(state)} tensors in {checkpoint} matches a SOFT parameter (first keys: "
                         f"{list(state)[:5]}); is it a SOFT checkpoint? Use prefix= for a checkpoint of a whole "
                         "detector/segmentor")
    for key in [k for k in state if (m := _STAGE_KEY_RE.fullmatch(k)) and int(m[1]) >= len(model.stages)]:
        del state[key]
        state.dropped.append(f"{key} (stage not built: out_indices)")
    resized = fit_pos_embeds(state, model)
    mismatched = [describe_shape_mismatch(k, tuple(v.shape), tuple(target[k].shape), model.in_channels)
                  for k, v in state.items() if k in target and v.shape != target[k].shape]
    if mismatched:
        raise ValueError(f"{checkpoint} does not fit this SOFT backbone ({len(mismatched)} shape mismatches: "
                         f"{_short(mismatched, 5)}); {arch_hint(state, model)}")
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = list(state.unexpected) + [k for k in state if k not in target]
    if strict and (missing or unexpected):
        raise ValueError(f"{checkpoint} does not fit this SOFT backbone: missing keys ({len(missing)}): "
                         f"{_short(missing)}; unexpected keys ({len(unexpected)}): {_short(unexpected)}. "
                         f"{arch_hint(state, model)}; or pass strict=False in the init_cfg to load what fits")
    loaded = {k: v for k, v in state.items() if k in target}
    model.load_state_dict(loaded, strict=False)
    fmt = "reference SOFT format, converted" if state.reference_keys else "mmsoft format"
    print_log(f"SOFT: loaded {len(loaded)} tensors from {checkpoint} "
              f"({fmt}); dropped {len(state.dropped)}: {_short(state.dropped)}; "
              f"resized position embeddings: {_short(resized)}", logger="current")
    if missing or unexpected:
        print_log(f"SOFT: loaded with strict=False: missing keys ({len(missing)}): {_short(missing)}; "
                  f"unexpected keys ({len(unexpected)}): {_short(unexpected)}; {arch_hint(state, model)}",
                  logger="current", level=logging.WARNING)
    return missing, unexpected
