"""mmsoft: SOFT (softmax-free transformer) backbones for OpenMMLab detection and segmentation.

Importing the package registers ``SOFT`` (``type='mmsoft.SOFT'``, or ``type='SOFT'`` with
``custom_imports=dict(imports=['mmsoft'])``).
"""
from .dependencies import check_dependencies

check_dependencies()  # before anything imports mmcv / mmengine: an incompatible stack gets the pip command to run

from . import models, ops  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["__version__", "models", "ops"]
