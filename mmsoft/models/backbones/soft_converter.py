"""Convert the reference SOFT / SOFT-Norm ImageNet checkpoints (github fudan-zvg/SOFT, timm-style keys) to
:class:`mmsoft.models.SOFT` parameter names, and load them into a backbone.

Reference name (``block{k}`` / ``patch_embed{k}`` / ``pos_embed{k}`` count stages from 1) -> mmsoft name
(``stages.{k-1}``):

========================================================  ==========================================
``patch_embed{k}.proj.{j}.*``                              ``stages.{k-1}.patch_embed.{j}.*``
``pos_embed{k}`` (``pos_embed4``: cls slot 0 dropped)      ``stages.{k-1}.pos_embed``
``block{k}.{j}.att.mha.W_q`` / ``W_v`` / ``ff``            ``stages.{k-1}.blocks.{j}.attn.q`` / ``v`` / ``proj``
``block{k}.{j}.att.mha.attn.Qlandmark_op``                 ``...attn.landmark_conv``
``block{k}.{j}.att.mha.attn.Qnorm_act.0``                  ``...attn.landmark_norm``
``block{k}.{j}.att.mha.attn.conv``                         ``...attn.v_conv``
``block{k}.{j}.att.norm1`` / ``norm2``                     ``...norm1`` / ``norm2``
``block{k}.{j}.att.ff1`` / ``ff2``                         ``...mlp.0`` / ``mlp.3``
``block4.{j}.norm1`` / ``norm2`` / ``attn.{q,kv,proj}``    ``stages.3.blocks.{j}.`` same names
``block4.{j}.mlp.fc1`` / ``mlp.fc2``                       ``stages.3.blocks.{j}.mlp.0`` / ``mlp.3``
``norm``                                                   ``stages.3.norm``
``head.*``, ``cls_token``                                  dropped (classification only)
========================================================  ==========================================

Keys that are already mmsoft-style (``stages.*``) pass through unchanged.
"""
from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor, nn

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
_DROPPED_RE = re.compile(r"head\..+|cls_token")


class SOFTStateDict(OrderedDict):
    """A converted state dict that also records what the conversion dropped and did not understand.

    ``dropped``: source keys deliberately left out (classifier head, cls token and its position slot,
    keys outside ``backbone.`` in a whole-detector checkpoint). ``unexpected``: source keys the
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


def _drop_cls_slot(name: str, pos: Tensor, dropped: list[str]) -> Tensor:
    """``(1, 1 + g*g, C)`` -> ``(1, g*g, C)``: the reference's stage-4 embedding has a leading cls-token slot."""
    if pos.dim() != 3 or pos.shape[0] != 1:
        raise ValueError(f"{name}: expected a (1, N, C) position embedding, got {tuple(pos.shape)}")
    n = pos.shape[1]
    if _square_side(n) is not None:
        return pos
    if _square_side(n - 1) is not None:
        dropped.append(f"{name}[:, 0] (cls-token slot)")
        return pos[:, 1:]
    raise ValueError(f"{name}: {n} positions are neither a square grid nor a square grid plus a cls slot; "
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
    return None


def soft_convert(ckpt: Mapping, strict: bool = True, prefix: str | None = None,
                 use_ema: bool = True) -> SOFTStateDict:
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
        if new_key.endswith("pos_embed"):
            value = _drop_cls_slot(key, value, result.dropped)
        if new_key in result:
            raise ValueError(f"soft_convert: {key!r} and another key both map to {new_key!r}; the checkpoint mixes "
                             "reference and mmsoft names for the same parameter")
        result[new_key] = value
        result.reference_keys += 1
    return result


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


def adapt_pos_embeds(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> list[str]:
    """Resize in place each ``*pos_embed`` of ``state`` whose token count differs from ``target``'s; returns notes."""
    notes = []
    for key, pos in list(state.items()):
        if not key.endswith("pos_embed") or key not in target or pos.shape == target[key].shape:
            continue
        src, dst = _square_side(pos.shape[1]) if pos.dim() == 3 else None, _square_side(target[key].shape[1])
        if src is None or dst is None or pos.shape[2] != target[key].shape[2]:
            continue  # left for the shape check to report
        state[key] = resize_pos_embed(pos, src, dst)
        notes.append(f"{key} {src}x{src} -> {dst}x{dst}")
    return notes


def allow_reference_checkpoint_types() -> None:
    """Allowlist, for ``torch.load(weights_only=True)``, what timm's CheckpointSaver adds: the ``args`` Namespace."""
    from mmsoft.utils.checkpoint_safety import allow_reference_checkpoint_types as allow

    allow()


def load_checkpoint_file(filename: str, map_location: str = "cpu") -> Mapping:
    """Load a reference (timm) or mmengine checkpoint: explicitly weights-only with the allowlist, verified (zip
    CRC-32, finite values); raises ``CheckpointError`` naming the file (see :mod:`mmsoft.utils.checkpoint_safety`)."""
    from mmsoft.utils.checkpoint_safety import load_checkpoint_safely

    return load_checkpoint_safely(filename, map_location=map_location)


def _short(keys: Sequence[str], limit: int = 20) -> str:
    if not keys:
        return "none"
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_soft_pretrained(model: nn.Module, checkpoint: str, prefix: str | None = None,
                         map_location: str = "cpu") -> tuple[list[str], list[str]]:
    """Load a reference or mmsoft checkpoint into ``model`` (a SOFT backbone); returns (missing, unexpected)."""
    ckpt = load_checkpoint_file(checkpoint, map_location=map_location)
    state = soft_convert(ckpt, strict=False, prefix=prefix)
    target = model.state_dict()
    resized = adapt_pos_embeds(state, target)
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in state.items() if k in target and v.shape != target[k].shape]
    if mismatched:
        raise ValueError(f"{checkpoint} does not fit this SOFT backbone ({len(mismatched)} shape mismatches: "
                         f"{_short(mismatched, 5)}); set the backbone's arch to the model the checkpoint was "
                         "trained as (tiny/small/medium/large/huge)")
    if not any(k in target for k in state):
        raise ValueError(f"none of the {len(state)} tensors in {checkpoint} matches a SOFT parameter (first keys: "
                         f"{list(state)[:5]}); is it a SOFT checkpoint? Use prefix= for a checkpoint of a whole "
                         "detector/segmentor")
    incompatible = model.load_state_dict(state, strict=False)
    missing = list(incompatible.missing_keys)
    unexpected = list(state.unexpected) + list(incompatible.unexpected_keys)
    fmt = "reference SOFT format, converted" if state.reference_keys else "mmsoft format"
    print_log(f"SOFT: loaded {len(state) - len(incompatible.unexpected_keys)} tensors from {checkpoint} ({fmt}); "
              f"dropped {len(state.dropped)}: {_short(state.dropped)}; "
              f"resized position embeddings: {_short(resized)}", logger="current")
    level = logging.WARNING if missing or unexpected else logging.INFO
    hint = " (check that arch matches the checkpoint)" if missing or unexpected else ""
    print_log(f"SOFT: missing keys ({len(missing)}): {_short(missing)}; "
              f"unexpected keys ({len(unexpected)}): {_short(unexpected)}{hint}", logger="current", level=level)
    return missing, unexpected
