"""Building blocks of the SOFT backbone."""
from .conv_stem import ConvPatchEmbed
from .soft_attention import SOFTAttention
from .soft_block import SOFTBlock
from .softmax_block import SoftmaxAttention, SoftmaxBlock

__all__ = ["ConvPatchEmbed", "SOFTAttention", "SOFTBlock", "SoftmaxAttention", "SoftmaxBlock"]
