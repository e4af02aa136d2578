"""The Newton-Schulz start of the published SOFT models (``mmsoft.ops.reference.newton_alpha``).

The oracle below is the reference's rule written out literally, with its host-synchronising loop: ``alpha = 2 / r^2``
(``r`` the largest row sum over the whole tensor it is given), halved while the largest column sum of
``|I - Ah (alpha Ah)|`` exceeds 1.01, at most 10 times.
"""
import pytest
import torch

from mmsoft.ops.landmark_solvers import newton_eigh_factors, newton_pinv
from mmsoft.ops.reference import gaussian_kernel, newton_alpha, newton_schulz_iterations


def literal_reference_alpha(mat: torch.Tensor) -> tuple[float, int]:
    """(alpha, number of halvings) of the reference's loop over the whole of ``mat (..., m, m)``."""
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype)
    alpha = 2 / mat.sum(-1).max() ** 2
    halvings = 0
    pnorm = (eye - mat @ (alpha * mat)).abs().sum(-2).max()
    while pnorm > 1.01 and halvings < 10:
        alpha = alpha * 0.5
        pnorm = (eye - mat @ (alpha * mat)).abs().sum(-2).max()
        halvings += 1
    return alpha.item(), halvings


def kernels(batch: int, heads: int, m: int, scales: list[float], dtype=torch.float64) -> torch.Tensor:
    """Gaussian kernels of landmarks spread by ``scales[b]`` (image b): from nearly identity to nearly all-ones."""
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(batch, heads, m, 16, generator=gen, dtype=torch.float64)
    k = k * torch.tensor(scales, dtype=torch.float64).view(batch, 1, 1, 1)
    return gaussian_kernel(k, k).to(dtype)


SCALES = [3.0, 0.5, 0.2, 0.1, 0.03, 0.0]  # far apart ... identical landmarks


def test_matches_the_reference_rule_per_image_float64():
    mats = kernels(len(SCALES), 3, 48, SCALES)
    alpha = newton_alpha(mats)
    assert alpha.shape == (len(SCALES), 3, 1, 1)
    seen = set()
    for b in range(len(SCALES)):
        expected, halvings = literal_reference_alpha(mats[b])  # the reference at batch size 1
        seen.add(halvings)
        assert torch.all(alpha[b] == alpha[b, 0]), "one alpha per image, shared by its heads"
        assert alpha[b, 0].item() == pytest.approx(expected, rel=1e-12), (b, halvings)
    assert {0, 7, 8} <= seen, seen  # none for the identity-like kernel, 7-8 for clustered landmarks


def test_one_alpha_per_matrix_for_3d_and_one_for_2d():
    mats = kernels(4, 1, 32, [2.0, 0.3, 0.1, 0.0])[:, 0]          # (B, m, m)
    alpha = newton_alpha(mats)
    assert alpha.shape == (4, 1, 1)
    for b in range(4):
        assert alpha[b].item() == pytest.approx(literal_reference_alpha(mats[b])[0], rel=1e-12)
        assert newton_alpha(mats[b]).shape == (1, 1)
        assert newton_alpha(mats[b]).item() == alpha[b].item()


def test_an_image_does_not_depend_on_its_batch_mates():
    mats = kernels(3, 2, 40, [0.0, 0.6, 3.0])  # image 1 between an all-ones and an identity-like kernel
    alone = newton_alpha(mats[1:2])
    together = newton_alpha(mats)
    assert torch.equal(together[1:2], alone)
    # and the reference's whole-batch rule would have coupled them
    assert literal_reference_alpha(mats)[0] != pytest.approx(literal_reference_alpha(mats[1:2])[0])


def test_newton_iterations_start_from_alpha_ah():
    mats = kernels(2, 2, 24, [0.3, 0.08])
    assert torch.equal(newton_schulz_iterations(mats, 0), newton_alpha(mats) * mats)
    one = newton_schulz_iterations(mats, 1)
    v0 = newton_alpha(mats) * mats
    assert torch.allclose(one, 2 * v0 - v0 @ mats @ v0, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eigh_filter_uses_the_same_start(dtype):
    mats = kernels(2, 2, 32, [0.4, 0.1], dtype=dtype)
    eigvecs, filt = newton_eigh_factors(mats, 20)
    via_eigh = eigvecs @ torch.diag_embed(filt) @ eigvecs.transpose(-1, -2)
    exact = newton_pinv(mats.double(), 20)
    assert ((via_eigh - exact).abs().max() / exact.abs().max()).item() < 1e-9


def test_traces_with_torch_compile_fullgraph():
    mats = kernels(2, 2, 16, [0.3, 0.05], dtype=torch.float32)
    compiled = torch.compile(newton_alpha, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(mats), newton_alpha(mats))
