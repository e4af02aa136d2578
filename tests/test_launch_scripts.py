"""tools/slurm_train.sh, tools/slurm_test.sh and tools/dist_test.sh, run for real on CPU.

``srun`` is replaced by tests/helpers/fake_srun, which records its arguments and starts the command
--ntasks times with the SLURM_* variables of a job step: the scripts, ``--launcher slurm`` and
mmsoft's CPU process-group set-up run as they would on a cluster node.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.run_configs import HELPERS, ROOT, free_port, retinanet_test_config, run_logged, subprocess_env

from mmsoft.testing import generate_demo_data

pytestmark = pytest.mark.slow


def _script(args: list[str], env: dict, log: Path) -> None:
    """Run a tools/*.sh script; fail with its output's tail."""
    run_logged(["bash", *args], log, env=env)


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    """One training iteration with tools/slurm_train.sh, 2 tasks, through the fake srun."""
    tmp = tmp_path_factory.mktemp("slurm")
    data = tmp / "data"
    generate_demo_data(data, seed=0, num_train=4, num_val=2)
    # after 1 iteration every box scores ~0.01: keep them all, or tools/test.py has no metrics to report (an error)
    cfg = retinanet_test_config(tmp / "cfg.py", data, tmp / "probe", batch_size=2, max_iters=1,
                                extra="model = dict(test_cfg=dict(score_thr=0.0))")
    bindir = tmp / "bin"
    bindir.mkdir()
    (bindir / "srun").symlink_to(HELPERS / "fake_srun")
    env = subprocess_env()
    env.update(PATH=f"{bindir}:{env['PATH']}", FAKE_SRUN_LOG=str(tmp / "srun_args.txt"), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), GPUS="2", GPUS_PER_NODE="2", CPUS_PER_TASK="1",
               SRUN_ARGS="--quotatype=auto --mem=0")
    _script([str(ROOT / "tools/slurm_train.sh"), "dev", "soft_demo", str(cfg), str(tmp / "wd")], env,
            tmp / "train.log")
    return tmp, cfg, env


def test_slurm_train_runs_one_task_per_gpu(slurm_run):
    tmp, _, _ = slurm_run
    args = (tmp / "srun_args.txt").read_text().splitlines()
    assert args[:10] == ["-p", "dev", "--job-name=soft_demo", "--gres=gpu:2", "--ntasks=2", "--ntasks-per-node=2",
                         "--cpus-per-task=1", "--kill-on-bad-exit=1", "--quotatype=auto", "--mem=0"]
    assert args[11:] == ["-u", str(ROOT / "tools/train.py"), str(tmp / "cfg.py"), f"--work-dir={tmp / 'wd'}",
                         "--launcher=slurm"]
    for rank in (0, 1):
        info = json.loads((tmp / f"probe/setup_rank{rank}_start0.json").read_text())
        assert info["world_size"] == 2 and info["wrapper"] == "CPUDistributedDataParallel"
    assert (tmp / "wd/iter_1.pth").is_file()


def test_slurm_test_evaluates_the_checkpoint(slurm_run):
    tmp, cfg, env = slurm_run
    env = dict(env, MASTER_PORT=str(free_port()))
    _script([str(ROOT / "tools/slurm_test.sh"), "dev", "soft_eval", str(cfg), str(tmp / "wd/iter_1.pth"),
             "--work-dir", str(tmp / "eval")], env, tmp / "test.log")
    args = (tmp / "srun_args.txt").read_text().splitlines()
    assert args[-7:] == ["-u", str(ROOT / "tools/test.py"), str(cfg), str(tmp / "wd/iter_1.pth"), "--launcher=slurm",
                         "--work-dir", str(tmp / "eval")]
    log = (tmp / "test.log").read_text()
    assert "Load checkpoint from" in log and "Iter(test) [1/1]" in log


def test_dist_test_evaluates_the_checkpoint(slurm_run):
    tmp, cfg, _ = slurm_run
    env = subprocess_env()
    env["PORT"] = str(free_port())
    _script([str(ROOT / "tools/dist_test.sh"), str(cfg), str(tmp / "wd/iter_1.pth"), "2", "--work-dir",
             str(tmp / "eval2")], env, tmp / "dist_test.log")
    log = (tmp / "dist_test.log").read_text()
    assert "Load checkpoint from" in log and "Iter(test) [1/1]" in log
