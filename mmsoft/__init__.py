"""mmsoft: SOFT (softmax-free transformer) backbones for OpenMMLab detection and segmentation.

Importing the package registers ``SOFT`` (``type='mmsoft.SOFT'``, or ``type='SOFT'`` with
``custom_imports=dict(imports=['mmsoft'])``) and allowlists, for torch's default ``weights_only=True`` loading, the
non-tensor types mmengine writes into checkpoints, so that mmdet's ``init_detector`` / ``DetInferencer``, mmseg's
``init_model`` and mmengine's ``load_checkpoint`` read mmsoft checkpoints safely. A ``type='mmsoft.SOFT'`` config
imports this package through the registry's ``locations``, so the allowlist is in place before any weights are read.
"""
from . import models, ops
from .utils.checkpoint_safety import allow_mmengine_checkpoint_types
from .version import __version__

allow_mmengine_checkpoint_types()

__all__ = ["__version__", "models", "ops"]
