"""mmsoft: SOFT (softmax-free transformer) backbones for OpenMMLab detection and segmentation.

Importing the package registers ``SOFT`` (``type='mmsoft.SOFT'``, or ``type='SOFT'`` with
``custom_imports=dict(imports=['mmsoft'])``).
"""
from . import models, ops
from .version import __version__

__all__ = ["__version__", "models", "ops"]
