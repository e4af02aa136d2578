"""mmsoft: SOFT (softmax-free transformer) backbones for OpenMMLab detection and segmentation.

Importing the package registers ``SOFT`` (``type='mmsoft.SOFT'``, or ``type='SOFT'`` with
``custom_imports=dict(imports=['mmsoft'])``) and allowlists, for torch's default ``weights_only=True`` loading, the
non-tensor types mmengine writes into checkpoints, so that mmdet's ``init_detector`` / ``DetInferencer``, mmseg's
``init_model`` and mmengine's ``load_checkpoint`` read mmsoft checkpoints safely. A ``type='mmsoft.SOFT'`` config
imports this package through the registry's ``locations``, so the allowlist is in place before any weights are read.
"""
from .dependencies import check_dependencies

check_dependencies()  # before anything imports mmcv / mmengine: an incompatible stack gets the pip command to run

from . import models, ops  # noqa: E402
from .checkpoint import allow_mmengine_checkpoint_types  # noqa: E402
from .version import __version__  # noqa: E402

allow_mmengine_checkpoint_types()

__all__ = ["__version__", "models", "ops"]
