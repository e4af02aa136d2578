"""A 3-level FPN on SOFT (``out_indices=(0, 1, 2)``) trains under DDP without ``find_unused_parameters``.

Stage 4 used to be built and run although nothing read it: its parameters got no gradient and DDP (which by default
expects a gradient for every parameter) stopped at iteration 2 with "Expected to have finished reduction in the prior
iteration". Two gloo processes train the RetinaNet demo with a 3-level neck for a few iterations.
"""
from __future__ import annotations

import pytest
import torch
from helpers.run_configs import PYTHON, ROOT, free_port, retinanet_test_config, run_logged, subprocess_env
from mmengine.config import Config

from mmsoft.testing import generate_demo_data

pytestmark = pytest.mark.slow

MAX_ITERS = 3
# RetinaNet's FPN starts at input level 1 and adds convs on top up to 5 outputs: 2 backbone levels + 3 extra
THREE_LEVELS = """
param_scheduler = []
optim_wrapper = dict(optimizer=dict(lr=2e-4))
model = dict(backbone=dict(out_indices=(0, 1, 2)), neck=dict(in_channels=[64, 128, 320], num_outs=5))
"""


def test_three_level_neck_trains_with_two_ddp_processes(tmp_path):
    data = tmp_path / "data"
    generate_demo_data(data, seed=0, num_train=4, num_val=1)
    cfg = retinanet_test_config(tmp_path / "three.py", data, tmp_path / "probe", batch_size=2, max_iters=MAX_ITERS,
                                extra=THREE_LEVELS)
    # DDP's default: every parameter must get a gradient
    assert not Config.fromfile(cfg, import_custom_modules=False).get("find_unused_parameters", False)
    env = subprocess_env()
    env.update(PORT=str(free_port()), PYTHON=PYTHON)
    cmd = ["bash", str(ROOT / "tools/dist_train.sh"), str(cfg), "2", "--work-dir", str(tmp_path / "wd")]
    run_logged(cmd, tmp_path / "three.log", env=env)
    states = [torch.load(tmp_path / f"probe/final_rank{rank}.pth") for rank in (0, 1)]
    assert not any(k.startswith("backbone.stages.3.") for k in states[0])  # stage 4 is not built
    params = [k for k in states[0] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(states[0][k], states[1][k]) for k in params)  # DDP kept the ranks in step
    for rank in (0, 1):
        iters = (tmp_path / f"probe/losses_rank{rank}.jsonl").read_text().splitlines()
        assert len(iters) == MAX_ITERS
