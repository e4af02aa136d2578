"""Write small test configs (in a tmp dir) that inherit the shipped demo configs; shared by slow tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent
PYTHON = sys.executable
RETINANET_DEMO = ROOT / "configs/demo/retinanet_soft-t-norm_fpn_demo.py"


def free_port() -> int:
    """A TCP port that was free a moment ago (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    """Environment for tool subprocesses: one thread, the probe hooks importable, weights-only loads."""
    env = dict(os.environ)
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(HELPERS), env.get("PYTHONPATH", "")]))
    return env


def run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: int = 300) -> None:
    """Run a tool from the repository root (env: :func:`subprocess_env` unless given), keeping its output in ``log``;
    fail with the command and the log's tail unless it exits 0."""
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env or subprocess_env(), stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{log.read_text()[-4000:]}"


FLIPLESS_PIPELINE = """
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.0),
    dict(type='PackDetInputs'),
]
"""


def retinanet_test_config(path: Path, data_root: Path, probe_dir: Path, *, batch_size: int, max_iters: int,
                          ckpt_interval: int = 10_000, hang_after_iter: int | None = None, fixed_order: bool = True,
                          num_workers: int = 0, save_last: bool = True, extra: str = "") -> Path:
    """The RetinaNet demo config on ``data_root`` with the probe hook; ``fixed_order``: no shuffling, no flips.

    ``extra`` is appended as config text: it must not assign a top-level name assigned here again.
    """
    coco = f"{data_root}/coco/"
    loader = f"batch_size={batch_size}, num_workers={num_workers}, persistent_workers={num_workers > 0}"
    dataset = f"data_root={coco!r}"
    if fixed_order:
        loader += ", sampler=dict(type='InfiniteSampler', shuffle=False)"
        dataset += ", pipeline=train_pipeline"
    text = f"""
_base_ = {str(RETINANET_DEMO)!r}
custom_imports = dict(imports=['mmsoft', 'probe_hooks'], allow_failed_imports=False)
{FLIPLESS_PIPELINE if fixed_order else ""}
train_dataloader = dict({loader}, dataset=dict({dataset}))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root={coco!r}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={coco + 'annotations/instances_val.json'!r})
test_evaluator = val_evaluator
train_cfg = dict(max_iters={max_iters}, val_interval=10_000)
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={ckpt_interval}, max_keep_ckpts=-1, save_last={save_last}))
custom_hooks = [dict(type='ProbeHook', out_dir={str(probe_dir)!r}, hang_after_iter={hang_after_iter!r})]
{extra}
"""
    path.write_text(text)
    return path
