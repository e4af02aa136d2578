"""Models of mmsoft; importing this registers them in ``mmsoft.registry.MODELS``."""
from .backbones import SOFT

__all__ = ["SOFT"]
