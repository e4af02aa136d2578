"""Safe resume: SIGKILL a demo training run after iteration K, rerun with --resume, compare to an unbroken run.

The demo config keeps its shuffling sampler, random flips and 2 persistent data workers, so the test
also shows that mmengine's resume replays data order and augmentation exactly (it re-draws the
batches of iterations 1..K from the seeded sampler and seeded workers, then continues).
Checkpoints are read with ``torch.load`` under ``weights_only=True`` (torch 2.13's default, and forced
in the resumed process with TORCH_FORCE_WEIGHTS_ONLY_LOAD=1, which overrides any weights_only=False):
mmsoft allowlists the types mmengine writes instead of unpickling arbitrary objects.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.run_configs import PYTHON, ROOT, retinanet_test_config, run_logged, subprocess_env
from mmengine.logging import HistoryBuffer

from mmsoft.checkpoint import allow_mmengine_checkpoint_types
from mmsoft.testing import generate_demo_data

pytestmark = pytest.mark.slow

KILL_AFTER = 3
MAX_ITERS = 6
# constant lr: every iteration moves the weights, so a wrong batch, flip or optimizer state shows in the loss
EXTRA = """
param_scheduler = []
optim_wrapper = dict(optimizer=dict(lr=2e-4))
"""


def _losses(probe: Path) -> list[dict]:
    """The per-iteration records ProbeHook wrote."""
    return [json.loads(line) for line in (probe / "losses_rank0.jsonl").read_text().splitlines()]


def _train(config: Path, work_dir: Path, log: Path, *extra_args: str, env: dict | None = None) -> None:
    """tools/train.py to completion."""
    run_logged([PYTHON, str(ROOT / "tools/train.py"), str(config), "--work-dir", str(work_dir), *extra_args], log,
               env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An unbroken 6-iteration run, and a run SIGKILLed after iteration 3 then resumed."""
    tmp = tmp_path_factory.mktemp("resume")
    data = tmp / "data"
    generate_demo_data(data, seed=0, num_train=8, num_val=2)
    common = dict(batch_size=2, max_iters=MAX_ITERS, fixed_order=False, num_workers=2, save_last=False, extra=EXTRA)
    full = retinanet_test_config(tmp / "full.py", data, tmp / "probe_full", **common)
    _train(full, tmp / "wd_full", tmp / "full.log")

    broken = retinanet_test_config(tmp / "broken.py", data, tmp / "probe_broken", ckpt_interval=KILL_AFTER,
                                   hang_after_iter=KILL_AFTER, **common)
    with open(tmp / "killed.log", "w") as f:
        proc = subprocess.Popen([PYTHON, str(ROOT / "tools/train.py"), str(broken), "--work-dir", str(tmp / "wd")],
                                cwd=ROOT, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not (tmp / "probe_broken/hanging").exists():
                assert proc.poll() is None, (tmp / "killed.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "training never reached the kill point"
                time.sleep(0.5)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data workers, mid-run
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    after_kill = dict(checkpoints=sorted(p.name for p in (tmp / "wd").glob("iter_*.pth")),
                      last_checkpoint=(tmp / "wd/last_checkpoint").read_text().strip(),
                      logged_iters=[r["iter"] for r in _losses(tmp / "probe_broken")])
    (tmp / "after_kill.json").write_text(json.dumps(after_kill))

    env = subprocess_env()
    env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    _train(broken, tmp / "wd", tmp / "resumed.log", "--resume", env=env)
    return tmp


def test_killed_run_stopped_after_iteration_k(runs):
    # what the killed process left: K logged iterations and the checkpoint of iteration K, nothing later
    after_kill = json.loads((runs / "after_kill.json").read_text())
    assert after_kill["checkpoints"] == [f"iter_{KILL_AFTER}.pth"]
    assert after_kill["last_checkpoint"].endswith(f"iter_{KILL_AFTER}.pth")
    assert after_kill["logged_iters"] == list(range(1, KILL_AFTER + 1))
    assert json.loads((runs / "probe_broken/setup_rank0_start0.json").read_text())["start_iter"] == 0
    resumed = json.loads((runs / f"probe_broken/setup_rank0_start{KILL_AFTER}.json").read_text())
    assert resumed["start_iter"] == KILL_AFTER
    assert f"resumed epoch: 0, iter: {KILL_AFTER}" in (runs / "resumed.log").read_text()


def test_resumed_losses_equal_uninterrupted_run(runs):
    full, broken = _losses(runs / "probe_full"), _losses(runs / "probe_broken")
    assert [r["iter"] for r in full] == list(range(1, MAX_ITERS + 1))
    assert [r["iter"] for r in broken] == list(range(1, MAX_ITERS + 1))  # 1..K killed run, K+1..n resumed
    for a, b in zip(full, broken):
        assert b["images"] == a["images"], a["iter"]  # same shuffled batches after the resume
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=0), a["iter"]
    # the comparison has teeth: the losses differ from iteration to iteration by far more than 1e-6
    losses = [r["loss"] for r in full]
    assert min(abs(x - y) for x, y in zip(losses, losses[1:])) > 1e-4


def test_checkpoint_loads_weights_only_with_allowlist(runs):
    ckpt = runs / f"wd/iter_{KILL_AFTER}.pth"
    allow_mmengine_checkpoint_types()
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert state["meta"]["iter"] == KILL_AFTER
    assert {"state_dict", "optimizer", "param_schedulers", "message_hub"} <= state.keys()
    assert isinstance(state["message_hub"]["log_scalars"]["train/loss"], HistoryBuffer)


def test_checkpoint_needs_allowlist_under_default_weights_only(runs):
    # a fresh interpreter without mmsoft's allowlist: torch 2.13's default torch.load refuses the checkpoint
    code = ("import pickle, sys, torch\n"
            "try:\n    torch.load(sys.argv[1], map_location='cpu')\n"
            "except pickle.UnpicklingError as e:\n    print('REFUSED', 'Weights only load failed' in str(e))\n"
            "else:\n    print('LOADED')\n")
    out = subprocess.run([sys.executable, "-c", code, str(runs / f"wd/iter_{KILL_AFTER}.pth")],
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "REFUSED True", out.stdout + out.stderr


class _Sneaky:
    """Pickles as ``getattr(HistoryBuffer, '__subclasses__')()``-style reference to a non-statistic attribute."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, "__subclasses__")


def test_allowlisted_getattr_only_resolves_history_buffer_statistics(tmp_path):
    allow_mmengine_checkpoint_types()
    good = tmp_path / "good.pth"
    torch.save({"fn": HistoryBuffer.mean}, good)
    assert torch.load(good, weights_only=True)["fn"] == HistoryBuffer.mean
    bad = tmp_path / "bad.pth"
    torch.save({"fn": _Sneaky()}, bad)
    with pytest.raises(pickle.UnpicklingError, match="HistoryBuffer statistics"):
        torch.load(bad, weights_only=True)
