"""Convolutional patch embeddings: the 3-conv stride-4 stem of stage 1 and the stride-2 downsamplers."""
from __future__ import annotations

import math

from mmcv.cnn import build_norm_layer
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .valid_region import ValidRegion


def _conv_norm_relu(in_channels: int, out_channels: int, stride: int, norm_cfg: dict) -> list[nn.Module]:
    # The published models keep the conv bias in front of BN; kept for checkpoint compatibility.
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            build_norm_layer(norm_cfg, out_channels)[1], nn.ReLU(inplace=True)]


class ConvPatchEmbed(nn.Sequential):
    """3x3 conv(s) + norm + ReLU that downsample an NCHW map.

    ``stem=True`` gives stage 1's stride-4 stem (conv s2 -> conv s1 -> conv s2, 32 hidden
    channels); otherwise a single stride-2 conv as in stages 2-4. The output of an ``H x W`` map is
    ``ceil(H / stride) x ceil(W / stride)``.
    """

    def __init__(self, in_channels: int, embed_dims: int, stem: bool = False, stem_channels: int = 32,
                 norm_cfg: dict | None = None) -> None:
        norm_cfg = norm_cfg or dict(type="BN", requires_grad=True)
        if stem:
            layers = (_conv_norm_relu(in_channels, stem_channels, 2, norm_cfg)
                      + _conv_norm_relu(stem_channels, stem_channels, 1, norm_cfg)
                      + _conv_norm_relu(stem_channels, embed_dims, 2, norm_cfg))
        else:
            layers = _conv_norm_relu(in_channels, embed_dims, 2, norm_cfg)
        super().__init__(*layers)

    @property
    def stride(self) -> int:
        """The output grid's stride: the product of the convolutions' strides (4 for the stem, 2 otherwise)."""
        return math.prod(self[i].stride[0] for i in range(0, len(self), 3))

    def forward(self, x: Tensor, valid: ValidRegion | None = None) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, embed_dims, ceil(H / stride), ceil(W / stride))``.

        With ``valid`` (the images' valid parts of ``x``, which must be 0 outside them) every image is computed as it
        would be alone: each convolution sees zeros outside the image, as its own zero padding, and training-mode
        BatchNorm takes its statistics over valid positions only. Outside the valid parts the output is undefined.
        """
        if valid is None:
            return super().forward(x)
        for i in range(0, len(self), 3):
            conv, norm, act = self[i], self[i + 1], self[i + 2]
            x = conv(x)
            valid = valid.downsample(conv.stride[0], x.shape[-2:])
            x = act(valid.batch_norm(norm, x) if isinstance(norm, _BatchNorm) else norm(x))
            if i + 3 < len(self):
                x = valid.zero_outside(x)
        return x
