"""The softmax-attention block of stage 4 (pre-norm, PVT style, full attention: sr_ratio 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath
from torch import Tensor, nn

from .valid_region import ValidRegion


class SoftmaxAttention(nn.Module):
    """Multi-head softmax attention with separate q and kv projections (names match the reference)."""

    def __init__(self, embed_dims: int, num_heads: int, attn_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.attn_drop_rate = attn_drop_rate
        self.q = nn.Linear(embed_dims, embed_dims)
        self.kv = nn.Linear(embed_dims, 2 * embed_dims)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Tokens ``(B, N, C)`` in, same shape out. ``key_mask (B, N)`` bool: only True tokens are attended to."""
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).view(b, n, heads, c // heads).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.attn_drop_rate if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class SoftmaxBlock(nn.Module):
    """``x = x + attn(LN(x)); x = x + MLP(LN(x))`` with exact GELU and LayerNorm eps 1e-6."""

    def __init__(self, embed_dims: int, num_heads: int, mlp_ratio: float = 4.0, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.attn = SoftmaxAttention(embed_dims, num_heads, attn_drop_rate, drop_rate)
        self.norm2 = nn.LayerNorm(embed_dims, eps=1e-6)
        hidden = int(embed_dims * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(embed_dims, hidden), nn.GELU(), nn.Dropout(drop_rate),
                                 nn.Linear(hidden, embed_dims), nn.Dropout(drop_rate))
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: Tensor, hw_shape: tuple[int, int], valid: ValidRegion | None = None) -> Tensor:
        """Tokens ``(B, E + H*W, C)`` in (``E`` leading extra tokens, e.g. a class token), same shape out. Full
        attention (``hw_shape`` unused); with ``valid`` (each image's valid part of the grid) only valid tokens and the
        extra ones are attended to."""
        key_mask = None
        if valid is not None:
            patches = valid.token_mask(x.device)
            extra = x.shape[1] - patches.shape[1]
            key_mask = torch.cat([patches.new_ones(patches.shape[0], extra), patches], 1) if extra else patches
        x = x + self.drop_path(self.attn(self.norm1(x), key_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))
