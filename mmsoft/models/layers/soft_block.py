"""The SOFT transformer block of stages 1-3 (post-norm, as in the published models)."""
from __future__ import annotations

from mmcv.cnn.bricks import DropPath
from torch import Tensor, nn

from .soft_attention import SOFTAttention
from .valid_region import ValidRegion


class SOFTBlock(nn.Module):
    """``x = LN(x + attn(x)); x = LN(x + MLP(x))`` with a 4x MLP and tanh-approximate GELU."""

    def __init__(self, embed_dims: int, num_heads: int, sr_ratio: int, conv_size: int,
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 sym_norm: bool = True, newton_iters: int = 20, attn_impl: str = "auto",
                 landmark_solver: str = "auto") -> None:
        super().__init__()
        self.attn = SOFTAttention(embed_dims, num_heads, sr_ratio, conv_size, sym_norm=sym_norm,
                                  newton_iters=newton_iters, attn_impl=attn_impl,
                                  landmark_solver=landmark_solver)
        self.norm1 = nn.LayerNorm(embed_dims)
        hidden = int(embed_dims * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(embed_dims, hidden), nn.GELU(approximate="tanh"),
                                 nn.Dropout(drop_rate), nn.Linear(hidden, embed_dims), nn.Dropout(drop_rate))
        self.norm2 = nn.LayerNorm(embed_dims)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: Tensor, hw_shape: tuple[int, int], valid: ValidRegion | None = None) -> Tensor:
        """Tokens ``(B, H*W, C)`` in, same shape out; ``valid``: each image's valid part of the grid, see
        :meth:`SOFTAttention.forward`."""
        x = self.norm1(x + self.drop_path(self.attn(x, hw_shape, valid)))
        return self.norm2(x + self.drop_path(self.mlp(x)))
