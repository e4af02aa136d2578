"""Helpers shared by mmsoft's command-line tools."""
from .channel_check import check_backbone_channels
from .checkpoint_safety import allow_mmengine_checkpoint_types
from .dist_env import setup_cpu_distributed
from .run_setup import check_dataset_exists, prepare_scope

__all__ = ["allow_mmengine_checkpoint_types", "check_backbone_channels", "check_dataset_exists", "prepare_scope",
           "setup_cpu_distributed"]
