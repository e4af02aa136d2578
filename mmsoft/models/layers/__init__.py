"""Building blocks of the SOFT backbone."""
from .conv_stem import ConvPatchEmbed
from .soft_attention import SOFTAttention
from .soft_block import SOFTBlock
from .softmax_block import SoftmaxAttention, SoftmaxBlock
from .valid_region import ValidRegion, trailing_zero_extents

__all__ = ["ConvPatchEmbed", "SOFTAttention", "SOFTBlock", "SoftmaxAttention", "SoftmaxBlock", "ValidRegion",
           "trailing_zero_extents"]
