"""Fixtures of the attention-core tests (helpers live in ``tests/ops/utils.py``)."""
import pytest
import torch

from mmsoft.ops import ext_loader


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


@pytest.fixture(autouse=True)
def seeded_global_rng() -> None:
    """Every test starts from the same global torch RNG state: inputs drawn without a generator do not depend on
    which tests ran before (pytest -k, -x, file order)."""
    torch.manual_seed(0)
