"""SOFT backbone (Softmax-free Transformer) for dense prediction, registered as ``mmsoft.SOFT``."""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmsoft.ops.dispatch import check_impl
from mmsoft.ops.landmark_solvers import check_num_iters, check_solver
from mmsoft.registry import MODELS

from ..layers import ConvPatchEmbed, SOFTBlock, SoftmaxBlock, ValidRegion
from .soft_converter import load_soft_pretrained, resize_pos_embed

NUM_STAGES = 4
# Stem stride 4, then x2 per stage.
STAGE_STRIDES = (4, 8, 16, 32)


class SOFTStage(nn.Module):
    """One pyramid stage: patch embedding, learned position embedding (and optional class token), blocks, optional
    out norm. Maps ``(B, C_in, H, W)`` to ``(B, C, H / s, W / s)`` (``s`` = the patch embedding's stride).

    With ``with_cls_token`` a learned class token, with its own position slot (``pos_embed[:, 0]``), is prepended to
    the patch tokens before the blocks and removed after the out norm: stage 4 of the reference models
    (``SoftmaxFreeVisionTransformer.forward_features``) attends over it, so its outputs depend on it.
    """

    def __init__(self, patch_embed: nn.Module, embed_dims: int, pos_grid: int, blocks: Sequence[nn.Module],
                 out_norm: bool, with_cls_token: bool = False, drop_rate: float = 0.0, with_cp: bool = False) -> None:
        super().__init__()
        self.patch_embed = patch_embed
        self.num_extra_tokens = 1 if with_cls_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims)) if with_cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_extra_tokens + pos_grid * pos_grid, embed_dims))
        self.pos_grid = pos_grid
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(embed_dims, eps=1e-6) if out_norm else nn.Identity()
        self.with_cp = with_cp

    def resized_pos_embed(self, hw_shape: tuple[int, int]) -> Tensor:
        """The patch part of the position embedding resized bilinearly to the token grid: ``(1, H*W, C)``."""
        return resize_pos_embed(self.pos_embed[:, self.num_extra_tokens:], self.pos_grid, hw_shape)

    def padded_pos_embed(self, valid: ValidRegion) -> Tensor:
        """Per image, the position embedding resized to that image's valid grid (as for the image alone: positions
        do not shift with the padding) and zero-padded to the batch grid: ``(B, H*W, C)``."""
        gh, gw = valid.grid
        by_size: dict[tuple[int, int], Tensor] = {}
        for size in valid.sizes:
            if size not in by_size:
                pos = self.resized_pos_embed(size).reshape(1, size[0], size[1], -1)
                by_size[size] = F.pad(pos, (0, 0, 0, gw - size[1], 0, gh - size[0]))
        return torch.cat([by_size[size] for size in valid.sizes]).flatten(1, 2)

    def _run_block(self, block: nn.Module, tokens: Tensor, hw_shape: tuple[int, int],
                   valid: ValidRegion | None) -> Tensor:
        if self.with_cp and tokens.requires_grad:
            return cp.checkpoint(block, tokens, hw_shape, valid, use_reentrant=False)
        return block(tokens, hw_shape, valid)

    def forward(self, x: Tensor, valid: ValidRegion | None = None) -> tuple[Tensor, ValidRegion | None]:
        """``(B, C_in, H, W)`` -> ``(B, C, ceil(H / s), ceil(W / s))``, and the images' valid parts of that grid.

        ``valid``: the images' valid parts of ``x`` (a zero-padded batch; ``x`` must be 0 outside them), None for a
        batch without padding. With it each image is computed as it would be alone (patch embedding, position
        embedding, attention) and the output is 0 outside its valid part.
        """
        x = self.patch_embed(x, valid)
        b, c, gh, gw = x.shape
        if valid is not None:
            valid = valid.downsample(self.patch_embed.stride, (gh, gw))
        masked = valid is not None and not valid.is_full
        pos = self.padded_pos_embed(valid) if masked else self.resized_pos_embed((gh, gw))
        tokens = x.flatten(2).transpose(1, 2) + pos
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(b, -1, -1) + self.pos_embed[:, :1], tokens], dim=1)
        tokens = self.pos_drop(tokens)
        for block in self.blocks:
            tokens = self._run_block(block, tokens, (gh, gw), valid if masked else None)
        tokens = self.norm(tokens)[:, self.num_extra_tokens:]
        x = tokens.transpose(1, 2).reshape(b, c, gh, gw)
        return (valid.zero_outside(x), valid) if masked else (x, None)


@MODELS.register_module()
class SOFT(BaseModule):
    """SOFT: Softmax-free Transformer backbone (Lu et al., NeurIPS 2021 / IJCV 2024).

    Four stages at strides 4/8/16/32. Stages 1-3 use softmax-free (Gaussian kernel) attention with
    Newton-Schulz pseudo-inverse; stage 4 uses ordinary softmax attention. ``sym_norm=True`` (the
    default) is SOFT-Norm, the variant behind every published detection/segmentation result.

    Args:
        arch: 'tiny' | 'small' | 'medium' | 'large' | 'huge', or a dict with ``embed_dims``,
            ``num_heads``, ``depths`` (4 values each) and optionally ``sr_ratios`` (4),
            ``conv_sizes`` (3: the V-conv kernels of stages 1-3) and ``mlp_ratio``.
        sym_norm: SOFT-Norm (True) or plain SOFT (False).
        in_channels: input image channels.
        out_indices: stages (0-3) whose maps are returned, NCHW, in stage order. Stages after ``max(out_indices)``
            are neither built nor run (e.g. ``(0, 1, 2)`` for a 3-level FPN: no stage-4 parameters, which would get
            no gradient and stop DDP without ``find_unused_parameters``); a checkpoint that has them loads, its extra
            keys reported.
        frozen_stages: -1 freezes nothing; 0 freezes the stem (stage 1's patch and position
            embedding); k >= 1 freezes the stem and stages 1..k (those that are built). Frozen parts stay in eval
            mode.
        norm_eval: keep BatchNorm layers (stem/downsamplers) in eval mode while training.
        with_cp: activation checkpointing of every block (less memory, slower).
        drop_rate: dropout after position embeddings and in MLPs.
        drop_path_rate: stochastic depth, increasing linearly over all blocks.
        newton_iters: Newton-Schulz iterations for the pseudo-inverse (20 in the paper).
        attn_impl: backend of the attention core, see :func:`mmsoft.ops.soft_attention`.
        landmark_solver: how the pseudo-inverse of the landmark kernel is applied: ``'auto'`` (default:
            ``'newton_lowrank'`` on the CPU, ``'newton'`` on CUDA, chosen per call by the input's device,
            :func:`mmsoft.ops.landmark_solvers.resolve_solver`) or a key of
            :data:`mmsoft.ops.landmark_solvers.SOLVERS`: ``'newton'`` (the published ``newton_iters`` Newton-Schulz
            steps, literally: the reference), ``'newton_eigh'`` (the same function in closed form through a float64
            eigendecomposition), ``'newton_thin'`` (the same function with half the forward GEMMs),
            ``'newton_lowrank'`` (the same function from a certified rank-64 subspace, eigendecomposition where the
            certificate fails: the fastest faithful choice for CPU inference with trained weights) or ``'cholesky'``
            (exact ridge inverse: not the function Newton-trained weights expect); see
            :mod:`mmsoft.ops.landmark_solvers`.
        with_cls_token: keep the reference models' stage-4 class token (and its position slot): stage 4's softmax
            attention then runs over it and the patch tokens, exactly as in the ImageNet models, so converted
            checkpoints compute the reference function. False (the default, as mmdet's PVT) drops it: a
            different stage-4 function for the same weights. No effect when stage 4 is not built.
        mask_zero_padding: compute every image of a batch as it would be computed alone, whatever padding its batch
            mates force (default True). mmdet's / mmseg's data preprocessors zero-pad images at the bottom / right
            after normalisation, so each image's trailing rows and columns that are exactly 0 in every channel are
            taken as padding: they take no part in the convolutions, the position embedding, the landmarks, the
            kernel sums and the attention, and the output maps are 0 there. A batch without such rows or columns
            runs the unmasked computation unchanged. Costs one pass over the input and a host synchronisation per
            forward; False turns it off (e.g. for inputs whose real content ends in exactly-zero rows).
        pretrain_img_size: image size the position embeddings were learned at (224 on ImageNet).
        norm_cfg: norm of the convolutional patch embeddings (BN; SyncBN for multi-GPU). With padding masking,
            training-mode BatchNorm takes its statistics over the images' valid positions only.
        pretrained: deprecated (mmseg's legacy ``model.pretrained``): a checkpoint path, the same as
            ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``. Give one of the two, not both.
        init_cfg: mmengine init config, e.g. ``dict(type='Pretrained', checkpoint=...)``.

    Inputs of any size work; stage ``i``'s map is ``ceil(H / s_i) x ceil(W / s_i)`` (strides 4, 8, 16, 32), the size a
    ResNet gives. The input is not padded: a SOFT stage whose token grid does not divide by its ``sr_ratio`` pads
    only its query map (by less than ``sr_ratio`` cells) for the landmark convolution.

    ``torch.jit.script`` is not supported (raises, naming alternatives); a ``torch.jit.trace`` is valid for the
    traced input size only, does not mask padding, and raises at run time for other sizes.
    """

    arch_zoo = {
        # Stage-3 depth 7 / stage-4 depth 4 for 'small' is what gives the published 24M parameters;
        # the reference code's soft_small preset ([1, 3, 20, 4]) builds a 38.9M model instead.
        "tiny": dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], depths=[1, 2, 3, 2]),
        "small": dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], depths=[1, 3, 7, 4]),
        "medium": dict(embed_dims=[64, 128, 288, 512], num_heads=[2, 4, 9, 16], depths=[1, 3, 29, 5]),
        "large": dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], depths=[1, 3, 40, 5]),
        "huge": dict(embed_dims=[64, 128, 352, 512], num_heads=[2, 4, 11, 16], depths=[1, 5, 49, 5]),
    }
    arch_defaults = dict(sr_ratios=[8, 4, 2, 1], conv_sizes=[9, 5, 3], mlp_ratio=4.0)

    def __init__(self, arch: str | dict = "tiny", sym_norm: bool = True, in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False,
                 with_cp: bool = False, drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 newton_iters: int = 20, attn_impl: str = "auto", landmark_solver: str = "auto",
                 with_cls_token: bool = False, mask_zero_padding: bool = True, pretrain_img_size: int = 224,
                 norm_cfg: dict | None = None, pretrained: str | None = None,
                 init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg=self._legacy_pretrained(pretrained, init_cfg))
        self.arch_settings = self._parse_arch(arch)
        self.out_indices = self._parse_out_indices(out_indices)
        if not -1 <= frozen_stages <= NUM_STAGES:
            raise ValueError(f"frozen_stages must be in [-1, {NUM_STAGES}], got {frozen_stages}")
        # The attention layers check these too (same functions); checked here first so that a bad value fails
        # before any stage is built, with the layer's own message.
        check_num_iters(newton_iters)
        check_solver(landmark_solver)
        check_impl(attn_impl)
        self.sym_norm = sym_norm
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.in_channels = in_channels
        self.with_cls_token = with_cls_token
        self.mask_zero_padding = mask_zero_padding

        s = self.arch_settings
        self.embed_dims = list(s["embed_dims"])
        depths = s["depths"]
        # Drop-path rates over the whole architecture, so that a truncated backbone keeps the rates of its stages.
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.num_stages = max(self.out_indices) + 1
        self.stages = nn.ModuleList()
        prev_channels = in_channels
        for i in range(self.num_stages):
            dims, heads, sr = s["embed_dims"][i], s["num_heads"][i], s["sr_ratios"][i]
            rates = dpr[sum(depths[:i]):sum(depths[:i + 1])]
            if i < NUM_STAGES - 1:
                blocks = [SOFTBlock(dims, heads, sr, s["conv_sizes"][i], mlp_ratio=s["mlp_ratio"],
                                    drop_rate=drop_rate, drop_path_rate=r, sym_norm=sym_norm,
                                    newton_iters=newton_iters, attn_impl=attn_impl,
                                    landmark_solver=landmark_solver) for r in rates]
            else:
                blocks = [SoftmaxBlock(dims, heads, mlp_ratio=s["mlp_ratio"], drop_rate=drop_rate,
                                       drop_path_rate=r) for r in rates]
            patch_embed = ConvPatchEmbed(prev_channels, dims, stem=(i == 0), norm_cfg=norm_cfg)
            last = i == NUM_STAGES - 1
            self.stages.append(SOFTStage(patch_embed, dims, pretrain_img_size // STAGE_STRIDES[i], blocks,
                                         out_norm=last, with_cls_token=with_cls_token and last,
                                         drop_rate=drop_rate, with_cp=with_cp))
            prev_channels = dims
        self._freeze_stages()

    # ------------------------------------------------------------------ configuration checks
    @classmethod
    def _parse_arch(cls, arch: str | dict) -> dict:
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_zoo:
                raise ValueError(f"unknown SOFT arch {arch!r}; choose one of {sorted(cls.arch_zoo)} or pass a "
                                 "dict with embed_dims, num_heads and depths")
            arch = cls.arch_zoo[arch.lower()]
        if not isinstance(arch, dict):
            raise TypeError(f"arch must be a str or dict, got {type(arch).__name__}")
        missing = {"embed_dims", "num_heads", "depths"} - set(arch)
        if missing:
            raise ValueError(f"custom arch dict is missing {sorted(missing)}")
        unknown = set(arch) - {"embed_dims", "num_heads", "depths", *cls.arch_defaults}
        if unknown:
            raise ValueError(f"custom arch dict has unknown keys {sorted(unknown)}; allowed: embed_dims, "
                             f"num_heads, depths, {', '.join(cls.arch_defaults)}")
        settings = {**cls.arch_defaults, **arch}
        for key, n in (("embed_dims", 4), ("num_heads", 4), ("depths", 4), ("sr_ratios", 4), ("conv_sizes", 3)):
            if len(settings[key]) != n:
                raise ValueError(f"arch {key} needs {n} values (one per stage), got {list(settings[key])}")
        for i, (dims, heads) in enumerate(zip(settings["embed_dims"], settings["num_heads"])):
            if heads <= 0 or dims % heads:
                raise ValueError(f"stage {i}: embed_dims {dims} is not divisible by num_heads {heads}")
        for i, sr in enumerate(settings["sr_ratios"]):
            if not isinstance(sr, int) or sr <= 0:
                raise ValueError(f"stage {i}: sr_ratio must be a positive int, got {sr!r}")
        return settings

    @staticmethod
    def _legacy_pretrained(pretrained: str | None, init_cfg: dict | list | None) -> dict | list | None:
        """mmseg's legacy ``pretrained=PATH`` (its EncoderDecoder passes ``model.pretrained`` to the backbone) as
        ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``, with a deprecation warning."""
        if pretrained is None:
            return init_cfg
        if not isinstance(pretrained, str):
            raise TypeError(f"pretrained must be a checkpoint path (str) or None, got {type(pretrained).__name__}")
        if init_cfg is not None:
            raise ValueError(f"SOFT got both pretrained={pretrained!r} and init_cfg={init_cfg}; keep only init_cfg "
                             "(in an mmseg config: set model.pretrained=None), or drop init_cfg to load pretrained")
        warnings.warn(f"SOFT(pretrained={pretrained!r}) is deprecated; use init_cfg=dict(type='Pretrained', "
                      f"checkpoint={pretrained!r}) (in an mmseg config: model.pretrained=None and "
                      "model.backbone.init_cfg=...)", FutureWarning, stacklevel=3)
        return dict(type="Pretrained", checkpoint=pretrained)

    @staticmethod
    def _parse_out_indices(out_indices: Sequence[int] | int) -> tuple[int, ...]:
        """The out indices in stage order, without repeats: the order the maps are returned in (as mmdet's ResNet)."""
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out = tuple(out_indices)
        bad = [i for i in out if not isinstance(i, int) or not 0 <= i < NUM_STAGES]
        if bad or not out:
            raise ValueError(f"out_indices must be non-empty stage indices in [0, {NUM_STAGES - 1}], got {out}")
        return tuple(sorted(set(out)))

    # ------------------------------------------------------------------ training-mode behaviour
    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen: list[nn.Module] = [self.stages[0].patch_embed]
        frozen_params = [self.stages[0].pos_embed]
        for i in range(min(self.frozen_stages, self.num_stages)):
            frozen.append(self.stages[i])
            frozen_params.append(self.stages[i].pos_embed)
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False
        for p in frozen_params:
            p.requires_grad = False

    def train(self, mode: bool = True) -> SOFT:
        """Switch mode, keeping frozen stages and (with ``norm_eval``) BatchNorms in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        """Random init as the published models (trunc-normal linears and position embeddings), or load
        ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=None, strict=True)``: a reference SOFT (timm-style)
        or an mmsoft checkpoint, converted by :func:`soft_convert`, with position embeddings resized to this model;
        see :func:`load_soft_pretrained` for what ``strict`` refuses. Any other ``init_cfg`` (a dict or list of
        mmengine initialisers, e.g. ``dict(type='Kaiming', layer='Conv2d')``) is applied by ``BaseModule`` on top of
        the published init."""
        pretrained = isinstance(self.init_cfg, dict) and self.init_cfg.get("type") == "Pretrained"
        if pretrained:
            unknown = set(self.init_cfg) - {"type", "checkpoint", "prefix", "map_location", "strict"}
            if "checkpoint" not in self.init_cfg or unknown:
                raise ValueError(f"SOFT init_cfg {self.init_cfg} must be dict(type='Pretrained', checkpoint=PATH) "
                                 f"with optional prefix, map_location and strict (unknown keys: {sorted(unknown)})")
        elif isinstance(self.init_cfg, list) and any(c.get("type") == "Pretrained" for c in self.init_cfg):
            raise ValueError("SOFT: give dict(type='Pretrained', checkpoint=...) as the whole init_cfg, not inside a "
                             "list, so that mmsoft converts and checks the checkpoint")
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=0.02)
            if stage.cls_token is not None:
                trunc_normal_(stage.cls_token, std=0.02)
        if pretrained:  # after the random init, so that keys a checkpoint lacks still get the published init
            load_soft_pretrained(self, self.init_cfg["checkpoint"], prefix=self.init_cfg.get("prefix"),
                                 map_location=self.init_cfg.get("map_location") or "cpu",
                                 strict=self.init_cfg.get("strict", True))
        elif self.init_cfg is not None:  # any other mmengine initialiser (Kaiming, Constant, ...) on top of it
            super().init_weights()

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Images ``(B, in_channels, H, W)`` -> one ``(B, C_i, ceil(H/s_i), ceil(W/s_i))`` map per out index.

        An empty batch (``B = 0``) gives empty maps of those shapes. With ``mask_zero_padding`` each image's trailing
        all-zero rows and columns are masked (see the class docstring).
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SOFT expects images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"SOFT expects a floating-point image tensor, got {x.dtype}; normalise the image first")
        if x.shape[0] == 0:
            return self._empty_outputs(x)
        valid = None
        if torch.jit.is_tracing():
            x = _guard_traced_size(x)
        elif self.mask_zero_padding:
            valid = ValidRegion.from_zero_padding(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, valid = stage(x, valid)
            if i in self.out_indices:
                outs.append(x.contiguous())
        return tuple(outs)

    def _empty_outputs(self, x: Tensor) -> tuple[Tensor, ...]:
        """Zero-image outputs of the right shapes, attached (with zero gradient) to the trainable parameters so that a
        backward through them, e.g. on a DDP rank with an empty batch, still reaches every parameter."""
        h, w = x.shape[-2:]
        outs = [x.new_zeros(0, self.embed_dims[i], math.ceil(h / STAGE_STRIDES[i]), math.ceil(w / STAGE_STRIDES[i]))
                for i in self.out_indices]
        trainable = [p for p in self.parameters() if p.requires_grad]
        if torch.is_grad_enabled() and trainable:
            anchor = torch.stack([p.sum() for p in trainable]).sum().to(x.dtype) * 0
            outs = [out + anchor for out in outs]
        return tuple(outs)

    def __prepare_scriptable__(self) -> SOFT:
        """Called by ``torch.jit.script``: SOFT cannot be scripted, say so instead of a TorchScript syntax error."""
        raise RuntimeError("torch.jit.script does not support mmsoft.SOFT (its forward masks padding with Python-side "
                           "sizes and runs custom autograd Functions / extension ops). Use torch.compile, or "
                           "torch.jit.trace at one fixed input size (the trace is valid for that size only).")


@torch.library.custom_op("mmsoft::traced_input_size_guard", mutates_args=())
def traced_input_size_guard(images: Tensor, size: list[int]) -> Tensor:
    """A copy of ``images``, after checking that their ``(H, W)`` is ``size``: the run-time size check that a
    ``torch.jit.trace`` of SOFT records (an op the trace keeps, as its output feeds the network)."""
    if list(images.shape[-2:]) != list(size):
        raise RuntimeError(f"this torch.jit.trace of mmsoft.SOFT was traced with {size[0]}x{size[1]} inputs and is "
                           f"valid for that size only, got {images.shape[-2]}x{images.shape[-1]}; trace it again for "
                           "this size, or use torch.compile")
    return images.clone()


@traced_input_size_guard.register_fake
def _(images: Tensor, size: list[int]) -> Tensor:
    return torch.empty_like(images)


def _guard_traced_size(x: Tensor) -> Tensor:
    """Under ``torch.jit.trace``: ``x`` through :func:`traced_input_size_guard`, so that the trace raises for other
    input sizes instead of computing with the traced sizes baked in; warns that the trace does not mask padding."""
    h, w = (int(v) for v in x.shape[-2:])
    warnings.warn(f"torch.jit.trace of mmsoft.SOFT: the trace is valid for {h}x{w} inputs only (it raises for other "
                  "sizes) and does not mask zero padding (mask_zero_padding)", stacklevel=3)
    return traced_input_size_guard(x, [h, w])
