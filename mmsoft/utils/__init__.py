"""Helpers shared by mmsoft's command-line tools."""
from .channel_check import check_backbone_channels, model_input_channels
from .checkpoint_fit import CheckpointFitHook, check_checkpoint_fits
from .checkpoint_safety import (
    CheckpointError,
    allow_mmengine_checkpoint_types,
    load_checkpoint_safely,
    use_safe_checkpoint_loading,
)
from .dist_env import setup_cpu_distributed
from .run_setup import check_dataset_exists, prepare_scope

__all__ = ["CheckpointError", "CheckpointFitHook", "allow_mmengine_checkpoint_types", "check_backbone_channels",
           "check_checkpoint_fits", "check_dataset_exists", "load_checkpoint_safely", "model_input_channels",
           "prepare_scope", "setup_cpu_distributed", "use_safe_checkpoint_loading"]
