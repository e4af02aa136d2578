"""The SOFT attention core (Gaussian kernel, Newton-Schulz pseudo-inverse, normalisation).

``soft_attention(..., impl='auto' | 'ext' | 'reference')`` is the public entry point; :func:`info` reports what the
compiled extension ``mmsoft._ext`` was built for.
"""
from .dispatch import resolve_impl, soft_attention
from .ext_loader import ext_available, info
from .landmark_solvers import landmark_inverse, newton_pinv
from .reference import gaussian_kernel

__all__ = ["ext_available", "gaussian_kernel", "info", "landmark_inverse", "newton_pinv", "resolve_impl",
           "soft_attention"]
