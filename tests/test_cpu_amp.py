"""``tools/train.py --amp`` on a machine without a GPU: bfloat16 autocast on the CPU instead of mmengine's
"AmpOptimizerWrapper is only available training on gpu"."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.demo_checkpoints import train_demo
from mmengine.optim import OptimWrapper
from torch import nn

from mmsoft.registry import OPTIM_WRAPPERS
from mmsoft.testing import generate_demo_data
from mmsoft.utils.cpu_amp import CPUAmpOptimWrapper


def _wrapper(**kwargs) -> CPUAmpOptimWrapper:
    model = nn.Linear(4, 3)
    # scoped: other tests leave mmdet / mmseg as MMEngine's default scope
    return OPTIM_WRAPPERS.build(dict(type="mmsoft.CPUAmpOptimWrapper",
                                     optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)), model


def test_forward_runs_in_bfloat16_and_parameters_stay_float32():
    wrapper, model = _wrapper(loss_scale="dynamic")  # AmpOptimWrapper's argument is accepted: bf16 needs no scaling
    x = torch.randn(2, 4)
    with wrapper.optim_context(model):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert model(x).dtype == torch.float32  # outside the context: plain float32
    before = model.weight.detach().clone()
    wrapper.update_params(out.float().square().mean())
    assert model.weight.dtype == torch.float32 and not torch.equal(model.weight, before)


def test_float16_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="bfloat16 only"):
        _wrapper(dtype="float16")


def test_scope_prefix_finds_it_from_another_codebase():
    # tools/train.py writes type='mmsoft.CPUAmpOptimWrapper' into mmdet / mmseg configs
    from mmengine.registry import OPTIM_WRAPPERS as ROOT_WRAPPERS

    assert ROOT_WRAPPERS.get("mmsoft.CPUAmpOptimWrapper") is CPUAmpOptimWrapper
    assert issubclass(CPUAmpOptimWrapper, OptimWrapper)


def _losses(work_dir: Path) -> list[float]:
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line)["loss"] for line in scalars.read_text().splitlines() if '"loss"' in line]


@pytest.mark.slow
def test_train_amp_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU path also where a GPU exists
    data = tmp_path / "data"
    generate_demo_data(data, seed=0, num_train=4, num_val=2)
    train_demo("det", data, tmp_path / "fp32", iters=2)
    train_demo("det", data, tmp_path / "amp", iters=2, extra_args=("--amp",))
    log = (tmp_path / "amp/train.log").read_text()
    assert "bfloat16 autocast on the CPU" in log
    (dumped,) = (tmp_path / "amp").glob("*/vis_data/config.py")  # the config the run used
    assert "type='mmsoft.CPUAmpOptimWrapper'" in dumped.read_text()
    fp32, amp = _losses(tmp_path / "fp32"), _losses(tmp_path / "amp")
    assert len(amp) == len(fp32) == 2
    # the same data and seed: bfloat16 changes the losses a little, not their size
    assert all(a != f and abs(a - f) < 0.05 * f for a, f in zip(amp, fp32)), (amp, fp32)
    saved = torch.load(tmp_path / "amp/iter_2.pth", map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in saved["state_dict"].values() if v.is_floating_point())
