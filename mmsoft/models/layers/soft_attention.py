"""SOFT attention as a module: projections, landmark convolution and the value convolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsoft.ops import soft_attention
from mmsoft.ops.dispatch import check_impl
from mmsoft.ops.landmark_solvers import check_num_iters, check_solver

from .valid_region import ValidRegion


class SOFTAttention(nn.Module):
    """Softmax-free attention of one SOFT block (keys are the queries; no key projection).

    Args:
        embed_dims: token channels C.
        num_heads: heads; ``C`` must divide evenly (the published models use head dim 32).
        sr_ratio: landmark stride s: an ``s x s`` stride-``s`` conv (shared by all heads) makes
            ``ceil(H/s) ceil(W/s)`` landmarks from the query map (zero-padded at the bottom / right when the token
            grid does not divide by s).
        conv_size: kernel of the depthwise (one kernel per head) conv on V added to the output.
        sym_norm: True for SOFT-Norm (symmetric normalisation of the pseudo-inverse).
        newton_iters: Newton-Schulz iterations of the pseudo-inverse (int >= 0).
        attn_impl: backend of :func:`mmsoft.ops.soft_attention` (:data:`mmsoft.ops.dispatch.IMPLS`).
        landmark_solver: how ``P . (A^T V)`` is evaluated: ``'auto'`` (default: by device,
            :func:`mmsoft.ops.landmark_solvers.resolve_solver`) or a key of
            :data:`mmsoft.ops.landmark_solvers.SOLVERS`: ``'newton'`` (faithful, literally), ``'newton_eigh'`` /
            ``'newton_thin'`` / ``'newton_lowrank'`` (the same function evaluated otherwise) or ``'cholesky'``
            (exact ridge solve).

    Raises ``ValueError`` for an unknown ``attn_impl`` / ``landmark_solver``, a negative ``newton_iters`` or
    ``embed_dims`` not divisible by ``num_heads`` (the same checks :func:`mmsoft.ops.soft_attention` makes per call).
    """

    def __init__(self, embed_dims: int, num_heads: int, sr_ratio: int, conv_size: int,
                 sym_norm: bool = True, newton_iters: int = 20, attn_impl: str = "auto",
                 landmark_solver: str = "auto") -> None:
        super().__init__()
        check_solver(landmark_solver)
        check_num_iters(newton_iters)
        check_impl(attn_impl)
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.sr_ratio = sr_ratio
        self.sym_norm = sym_norm
        self.newton_iters = newton_iters
        self.attn_impl = attn_impl
        self.landmark_solver = landmark_solver
        self.q = nn.Linear(embed_dims, embed_dims)
        self.v = nn.Linear(embed_dims, embed_dims)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.landmark_conv = nn.Conv2d(self.head_dims, self.head_dims, sr_ratio, stride=sr_ratio, bias=False)
        self.landmark_norm = nn.LayerNorm(self.head_dims)
        # Holds the value conv's weight (reference name ``conv``); applied by local_values() through F.conv2d with the
        # weight repeated over each head's channels, not through this module's forward (no bias, stride 1).
        self.v_conv = nn.Conv2d(num_heads, num_heads, conv_size, padding=conv_size // 2, groups=num_heads,
                                bias=False)

    def forward(self, x: Tensor, hw_shape: tuple[int, int], valid: ValidRegion | None = None) -> Tensor:
        """Attend over tokens ``x (B, H*W, C)`` laid out on the grid ``hw_shape``.

        ``valid``: each image's valid part of the grid (a zero-padded batch). Tokens outside it take no part: their
        queries and values are zeroed (so the landmark conv, ``A^T V`` and the value conv see the zeros of the image
        alone) and landmarks whose cell holds no valid token are masked out of the landmark solve. Outputs at those
        tokens are undefined.
        """
        b, n, c = x.shape
        h, w = hw_shape
        heads, d, sr = self.num_heads, self.head_dims, self.sr_ratio
        q = self.q(x).view(b, n, heads, d).transpose(1, 2) * d ** -0.25      # (B, heads, N, d)
        v = self.v(x).view(b, n, heads, d).transpose(1, 2)                   # (B, heads, N, d)
        landmark_mask = None
        if valid is not None:
            tokens = valid.token_mask(x.device)[:, None, :, None]            # (B, 1, N, 1)
            q = torch.where(tokens, q, torch.zeros((), dtype=q.dtype, device=q.device))
            v = torch.where(tokens, v, torch.zeros((), dtype=v.dtype, device=v.device))
            landmark_mask = valid.cell_mask(sr, x.device)[:, None]           # (B, 1, m)

        q_map = q.reshape(b * heads, h, w, d).permute(0, 3, 1, 2)            # (B*heads, d, H, W)
        if h % sr or w % sr:  # partial cells at the bottom / right: their landmarks see zero queries beyond the grid
            q_map = F.pad(q_map, (0, (-w) % sr, 0, (-h) % sr))
        landmarks = self.landmark_conv(q_map).flatten(2).transpose(1, 2)     # (B*heads, m, d)
        landmarks = F.gelu(self.landmark_norm(landmarks)).view(b, heads, -1, d)

        out = soft_attention(q, landmarks, v, sym_norm=self.sym_norm, num_iters=self.newton_iters,
                             impl=self.attn_impl, solver=self.landmark_solver, landmark_mask=landmark_mask)

        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj(out + self.local_values(v, hw_shape))

    def local_values(self, v: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        """The value conv (reference: the ``conv`` of the SOFT attention), ``(B, N, heads * d)`` for values
        ``v (B, heads, N, d)`` on the grid ``hw_shape``: one ``k x k`` kernel per head, shared by that head's ``d``
        channels, zero padding.

        Evaluated as one depthwise conv over ``heads * d`` channels in channels-last layout, each head's kernel
        repeated over its channels. The same values as a grouped conv over ``heads`` channels with the ``d``
        channels moved to the batch dim, but oneDNN runs the channels-last depthwise form far faster (stage 1 of
        SOFT-T at 800x1344, k = 9: forward 0.18 -> 0.02 s, backward 0.43-0.73 -> 0.15 s on one CPU thread).
        """
        b, heads, n, d = v.shape
        h, w = hw_shape
        v_map = v.transpose(1, 2).reshape(b, h, w, heads * d).permute(0, 3, 1, 2)  # channels-last (B, heads*d, H, W)
        weight = self.v_conv.weight.repeat_interleave(d, 0)                           # (heads*d, 1, k, k)
        local = F.conv2d(v_map, weight, padding=self.v_conv.padding, groups=heads * d)
        return local.permute(0, 2, 3, 1).reshape(b, n, heads * d)
