"""Shared fixtures of the attention-core tests: devices with a built extension and per-dtype tolerances."""
import pytest
import torch

from mmsoft.ops import ext_loader

# Max |ext - float64 reference| relative to max |reference|, per input dtype. The kernels accumulate in fp32
# (fp64 for fp64 inputs), so the error is the final rounding to the input dtype plus fp32 accumulation noise.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def _device_params():
    cuda_ok = torch.cuda.is_available() and ext_loader.ext_available("cuda")
    return [
        pytest.param("cpu", marks=pytest.mark.skipif(not ext_loader.ext_available("cpu"),
                                                     reason="mmsoft._ext is not built")),
        pytest.param("cuda", marks=pytest.mark.skipif(not cuda_ok, reason="needs a GPU and the CUDA extension")),
    ]


@pytest.fixture(params=_device_params())
def device(request) -> str:
    """Every device the extension was built for and that exists here ('cuda' is skipped without a GPU)."""
    return request.param


@pytest.fixture
def needs_cpu_ext() -> None:
    if not ext_loader.ext_available("cpu"):
        pytest.skip("mmsoft._ext is not built")


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref| in float64."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
