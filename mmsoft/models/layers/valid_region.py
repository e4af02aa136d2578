"""Where each image of a zero-padded batch is valid, and the masks that keep its padding out of the SOFT backbone.

mmdet's and mmseg's data preprocessors stack the images of a batch into one tensor by zero-padding each image at the
bottom and right, after normalisation. :class:`ValidRegion` records, for one resolution of the network (pixels, or a
stage's token grid), the top-left ``h x w`` part of every image that belongs to the image itself. The backbone uses it
to compute every image exactly as it would compute the image alone.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


def trailing_zero_extents(images: Tensor) -> list[tuple[int, int]]:
    """Per image of ``images (B, C, H, W)``, the size ``(h, w)`` that remains after removing its trailing rows and
    columns that are exactly zero in every channel. An all-zero image keeps its full size.

    Reads the whole batch once and synchronises with the host (the sizes are Python ints).
    """
    b, _, h, w = images.shape
    nonzero = images.ne(0).any(1)                                      # (B, H, W)
    rows, cols = nonzero.any(2), nonzero.any(1)                        # (B, H), (B, W)
    # argmax returns the first maximum: on the flipped indicator, the distance of the last non-zero row from the end.
    # An all-zero image has no non-zero row: argmax is 0 and it keeps its full size.
    trailing_h = rows.flip(1).to(torch.uint8).argmax(1)
    trailing_w = cols.flip(1).to(torch.uint8).argmax(1)
    sizes = torch.stack([h - trailing_h, w - trailing_w], 1).tolist()
    return [(int(sh), int(sw)) for sh, sw in sizes]


class ValidRegion:
    """The valid top-left part of every image of a batch on one grid.

    Args:
        sizes: ``(h, w)`` per image, each at least 1 and at most ``grid``.
        grid: ``(H, W)`` of the batch tensor at this resolution.

    Masks are built once per region and device and cached (a region lives for one forward pass).
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], grid: Sequence[int]) -> None:
        self.sizes = [(int(h), int(w)) for h, w in sizes]
        self.grid = (int(grid[0]), int(grid[1]))
        bad = [s for s in self.sizes if not (1 <= s[0] <= self.grid[0] and 1 <= s[1] <= self.grid[1])]
        if bad:
            raise ValueError(f"valid sizes {bad} do not fit the grid {self.grid}")
        self._cache: dict[tuple, Tensor] = {}

    @classmethod
    def from_zero_padding(cls, images: Tensor) -> ValidRegion | None:
        """The region of ``images (B, C, H, W)`` without each image's trailing all-zero rows and columns (see
        :func:`trailing_zero_extents`); None when no image has any, i.e. the batch holds no padding."""
        sizes = trailing_zero_extents(images)
        grid = tuple(images.shape[-2:])
        if all(s == grid for s in sizes):
            return None
        return cls(sizes, grid)

    @property
    def is_full(self) -> bool:
        """True when every image fills the whole grid (nothing to mask)."""
        return all(s == self.grid for s in self.sizes)

    def downsample(self, stride: int, grid: Sequence[int]) -> ValidRegion:
        """The region after a layer of ``stride`` that maps this grid to ``grid``: ``ceil(size / stride)``, the size a
        zero-padded convolution (3x3, padding 1) gives for the image alone."""
        sizes = [(math.ceil(h / stride), math.ceil(w / stride)) for h, w in self.sizes]
        return ValidRegion([(min(h, grid[0]), min(w, grid[1])) for h, w in sizes], grid)

    def _extent_mask(self, sizes: Sequence[tuple[int, int]], grid: tuple[int, int], device: torch.device) -> Tensor:
        key = ("extent", tuple(sizes), grid, str(device))
        if key not in self._cache:
            ext = torch.tensor(sizes, dtype=torch.int64, device=device).view(-1, 2, 1)       # (B, 2, 1)
            rows = torch.arange(grid[0], device=device) < ext[:, 0]                           # (B, H)
            cols = torch.arange(grid[1], device=device) < ext[:, 1]                           # (B, W)
            self._cache[key] = rows[:, :, None] & cols[:, None, :]                            # (B, H, W)
        return self._cache[key]

    def map_mask(self, device: torch.device) -> Tensor:
        """``(B, 1, H, W)`` bool, True inside each image's valid part."""
        return self._extent_mask(self.sizes, self.grid, device)[:, None]

    def token_mask(self, device: torch.device) -> Tensor:
        """``(B, H*W)`` bool, True for each image's valid tokens (row-major, as ``flatten(2)`` lays them out)."""
        return self._extent_mask(self.sizes, self.grid, device).flatten(1)

    def cell_mask(self, cell: int, device: torch.device) -> Tensor:
        """``(B, ceil(H / cell) * ceil(W / cell))`` bool, True for the ``cell x cell`` cells (a stride-``cell``
        landmark each, row-major) that hold at least one valid token of the image."""
        sizes = [(math.ceil(h / cell), math.ceil(w / cell)) for h, w in self.sizes]
        grid = (math.ceil(self.grid[0] / cell), math.ceil(self.grid[1] / cell))
        return self._extent_mask(sizes, grid, device).flatten(1)

    def zero_outside(self, x: Tensor) -> Tensor:
        """``x (B, C, H, W)`` with every position outside the valid parts set to 0 (``torch.where``: a non-finite value
        there cannot leak in)."""
        return torch.where(self.map_mask(x.device), x, torch.zeros((), dtype=x.dtype, device=x.device))

    def batch_norm(self, norm: _BatchNorm, x: Tensor) -> Tensor:
        """``norm(x)`` for ``x (B, C, H, W)`` with batch statistics (training mode) taken over the valid positions
        only, as for the images alone; positions outside are left 0. In eval mode (running statistics) BatchNorm is
        per position and ``norm(x)`` is returned as it is."""
        if not (norm.training or not norm.track_running_stats):
            return norm(x)
        mask = self.map_mask(x.device)[:, 0]                                          # (B, H, W)
        channels_first = x.transpose(0, 1)                                            # (C, B, H, W)
        valid = channels_first[:, mask]                                               # (C, N_valid)
        normed = norm(valid[None, :, :, None])[0, :, :, 0]                            # BN over (1, C, N_valid, 1)
        out = channels_first.new_zeros(channels_first.shape)
        out[:, mask] = normed
        return out.transpose(0, 1)
