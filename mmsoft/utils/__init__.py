"""Run-time set-up of mmsoft's command-line tools (train / test / demo / analysis): config scope and dataset checks,
CPU distributed training, CPU AMP, the model-fits-its-backbone and checkpoint-fits-its-model checks, complexity.

This package sits above the models (it checks and measures them); the models never import it. Checkpoint reading
(weights-only, verified) is :mod:`mmsoft.checkpoint`, below the models.
"""
from .channel_check import check_backbone_channels, model_input_channels
from .checkpoint_fit import CheckpointFitHook, check_checkpoint_fits
from .dist_env import setup_cpu_distributed
from .run_setup import check_dataset_exists, prepare_scope

__all__ = ["CheckpointFitHook", "check_backbone_channels", "check_checkpoint_fits", "check_dataset_exists",
           "model_input_channels", "prepare_scope", "setup_cpu_distributed"]
