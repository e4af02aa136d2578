"""mmsoft's registries: children of MMEngine's root registries.

Being children of the root (with ``locations``) is what lets an mmdet or mmseg config say
``type='mmsoft.SOFT'``: MMEngine sees the ``mmsoft.`` scope prefix, imports the locations listed
here and builds from this registry, without the config needing ``custom_imports``. mmsoft registers only into
these children (as mmpretrain does), never into MMEngine's root registries.
"""
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import Registry

MODELS = Registry("model", parent=MMENGINE_MODELS, scope="mmsoft", locations=["mmsoft.models"])
OPTIM_WRAPPERS = Registry("optim_wrapper", parent=MMENGINE_OPTIM_WRAPPERS, scope="mmsoft",
                          locations=["mmsoft.utils.cpu_amp"])
MODEL_WRAPPERS = Registry("model_wrapper", parent=MMENGINE_MODEL_WRAPPERS, scope="mmsoft",
                          locations=["mmsoft.utils.dist_env"])

__all__ = ["MODELS", "MODEL_WRAPPERS", "OPTIM_WRAPPERS"]
