"""Test and demo helpers of mmsoft, as mmdet keeps them in ``mmdet.testing``: the synthetic shapes demo data
generator (numpy and Pillow only)."""
from .synthetic_shapes import (
    CLASSES,
    GENERATOR_VERSION,
    SEG_CLASSES,
    demo_data_paths,
    generate_demo_data,
    polygon_to_mask,
    render_sample,
)

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "SEG_CLASSES",
    "demo_data_paths",
    "generate_demo_data",
    "polygon_to_mask",
    "render_sample",
]
