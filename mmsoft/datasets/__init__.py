"""Dataset helpers of mmsoft (no mmdet/mmseg imports here): the synthetic shapes demo data generator."""
from .synthetic_shapes import (
    CLASSES,
    GENERATOR_VERSION,
    PALETTE,
    SEG_CLASSES,
    SEG_PALETTE,
    demo_data_paths,
    generate_demo_data,
    polygon_to_mask,
    render_sample,
)

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "PALETTE",
    "SEG_CLASSES",
    "SEG_PALETTE",
    "demo_data_paths",
    "generate_demo_data",
    "polygon_to_mask",
    "render_sample",
]
