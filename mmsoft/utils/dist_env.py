"""Distributed training without CUDA: gloo, a CPU DDP wrapper and a process group set up by mmsoft.

mmengine assumes GPUs for ``--launcher pytorch|slurm|mpi``: its ``init_dist`` calls
``torch.cuda.set_device`` (an AttributeError on CPU-only torch builds), its default backend is nccl
and its DDP wrapper is built with ``device_ids=[LOCAL_RANK]`` (DDP rejects device ids for CPU
modules). :func:`setup_cpu_distributed` fixes all three when ``torch.cuda.is_available()`` is False
and leaves GPU runs to mmengine untouched.

SyncBN: mmengine's Runner reverts SyncBN to BN when not distributed and converts BN to SyncBN when
distributed and the config says ``sync_bn='torch'``. torch's SyncBatchNorm cannot run on CPU tensors
in a process group (its forward raises), so the CPU wrapper reverts SyncBN layers to BN, with a
warning: every rank then normalises with its own batch statistics.
"""
from __future__ import annotations

import datetime
import os
import subprocess

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm

from mmsoft.registry import MODEL_WRAPPERS

CPU_WRAPPER = "MMSoftCPUDistributedDataParallel"  # in mmsoft's MODEL_WRAPPERS: type='mmsoft.' + CPU_WRAPPER


def _has_sync_bn(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds a torch SyncBatchNorm layer."""
    return any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())


@MODEL_WRAPPERS.register_module(name=CPU_WRAPPER)
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper for CPU modules (no ``device_ids``), with SyncBN reverted to BN."""

    def __init__(self, module: torch.nn.Module, **kwargs) -> None:
        kwargs["device_ids"] = None
        kwargs.pop("output_device", None)
        if _has_sync_bn(module):
            print_log("SyncBatchNorm has no CPU implementation in torch: reverting SyncBN layers to BN "
                      "(each process normalises with its own batch statistics)", logger="current",
                      level=30)
            module = revert_sync_batchnorm(module)
        super().__init__(module=module, **kwargs)


#: The launchers' environment variables holding (RANK, WORLD_SIZE, LOCAL_RANK).
_LAUNCHER_RANK_VARS = {"slurm": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
                       "mpi": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK")}


def _rank_env(launcher: str) -> None:
    """Set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from slurm's or Open MPI's variables, as mmengine does for GPUs; slurm
    gives the master address (the first node), with Open MPI MASTER_ADDR must be set."""
    rank, world_size, local_rank = _LAUNCHER_RANK_VARS[launcher]
    os.environ["RANK"] = os.environ[rank]
    os.environ["WORLD_SIZE"] = os.environ[world_size]
    os.environ["LOCAL_RANK"] = os.environ.get(local_rank, "0")
    os.environ.setdefault("MASTER_PORT", "29500")
    if "MASTER_ADDR" in os.environ:
        return
    if launcher != "slurm":
        raise KeyError(f"--launcher {launcher} needs the environment variable MASTER_ADDR")
    node_list = os.environ["SLURM_NODELIST"]
    os.environ["MASTER_ADDR"] = subprocess.getoutput(f"scontrol show hostname {node_list} | head -n1")


def setup_cpu_distributed(cfg: Config) -> bool:
    """Prepare a ``--launcher pytorch|slurm|mpi`` run on a machine without CUDA; True if it did.

    Sets ``env_cfg.dist_cfg.backend='gloo'``, uses the CPU DDP wrapper (unless the config sets
    ``model_wrapper_cfg``; mmengine's default passes CUDA device ids) and creates the
    process group (env:// rendezvous from RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) so that
    mmengine's ``init_dist`` (which needs CUDA) is skipped. Does nothing with CUDA or ``launcher='none'``.
    """
    launcher = cfg.get("launcher", "none")
    if launcher == "none" or torch.cuda.is_available():
        return False
    dist_cfg = dict(cfg.get("env_cfg", {}).get("dist_cfg", {}))
    cfg.merge_from_dict({"env_cfg.dist_cfg.backend": "gloo"})

    if cfg.get("model_wrapper_cfg") is None:  # a wrapper the config chose explicitly is left alone
        cfg.model_wrapper_cfg = dict(type=f"mmsoft.{CPU_WRAPPER}", broadcast_buffers=False,
                                     find_unused_parameters=cfg.get("find_unused_parameters", False))

    if torch_dist.is_initialized():
        return True
    if launcher in _LAUNCHER_RANK_VARS:
        _rank_env(launcher)
    elif launcher != "pytorch":
        raise ValueError(f"unknown launcher {launcher!r}")
    kwargs = {}
    timeout = dist_cfg.get("timeout")
    if timeout is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout)
    torch_dist.init_process_group(backend="gloo", rank=int(os.environ["RANK"]),
                                  world_size=int(os.environ["WORLD_SIZE"]), **kwargs)
    return True


def close_distributed(synchronize: bool = True) -> None:
    """Destroy the default process group if one exists (the end of a ``tools/train.py`` / ``tools/test.py`` run).

    Without it the gloo process group's threads are still running when the interpreter exits, and a rank can end in
    ``terminate called without an active exception`` (SIGABRT) after its work is done; torch also warns about it.
    ``synchronize`` (a run that ended normally): wait for every rank first, so that no rank tears its group down while
    another still talks to it (without the barrier a 2-rank ``tools/dist_test.sh`` still aborted in 1 of 3 runs);
    pass False after an error, when the other ranks may never arrive.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        if synchronize:
            torch_dist.barrier()
        torch_dist.destroy_process_group()
