"""Helpers shared by mmsoft's command-line tools."""
from .checkpoint_safety import allow_mmengine_checkpoint_types
from .run_setup import check_dataset_exists, prepare_scope

__all__ = ["allow_mmengine_checkpoint_types", "check_dataset_exists", "prepare_scope"]
