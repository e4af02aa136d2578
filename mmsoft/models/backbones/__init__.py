"""Backbones registered in ``mmsoft.registry.MODELS``."""
from .soft import SOFT

__all__ = ["SOFT"]
