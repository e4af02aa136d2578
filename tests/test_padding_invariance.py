"""An image's features do not depend on the padding its batch mates force (SOFT's ``mask_zero_padding``).

mmdet / mmseg stack a batch by zero-padding every image at the bottom / right after normalisation. SOFT takes each
image's trailing all-zero rows and columns as padding and computes the image as it would compute it alone. The
weights are the golden test's seeded "realistic" ones (ill-conditioned landmark kernels, as in trained models), so
that the Newton-Schulz start and the spectral filter matter as they do in real use.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from helpers.reference_weights import seeded_reference_state_dict

from mmsoft.models import SOFT
from mmsoft.models.backbones.soft_converter import soft_convert
from mmsoft.models.layers import ValidRegion, trailing_zero_extents
from mmsoft.ops import ext_loader
from mmsoft.ops.landmark_solvers import SOLVERS

TOL = 1e-4  # "within float noise": max |difference| / max |alone|, per stage
STRIDES = (4, 8, 16, 32)


def realistic_tiny(**kwargs) -> SOFT:
    """SOFT-Tiny-Norm with the class token and the seeded reference weights (of the stages it builds), eval mode."""
    model = SOFT(arch="tiny", with_cls_token=True, drop_path_rate=0.0, **kwargs)
    state = soft_convert(seeded_reference_state_dict("soft_norm_tiny", 0, torch.float32))
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)  # stages it builds
    return model.eval()


def image(h: int, w: int, seed: int) -> torch.Tensor:
    """A normalised-looking image: smooth structure plus noise, no exactly-zero pixel."""
    gen = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.randn(1, 3, h // 8 + 1, w // 8 + 1, generator=gen), size=(h, w), mode="bilinear")
    return coarse + 0.3 * torch.randn(1, 3, h, w, generator=gen)


def pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def relative(alone: torch.Tensor, other: torch.Tensor) -> float:
    return ((alone - other).abs().max() / alone.abs().max()).item()


def stage_errors(alone: tuple, batch: tuple, index: int = 0) -> list[float]:
    """Per stage: the image's map in the padded batch, cropped to its own size, against its map alone."""
    return [relative(a[0], b[index, :, :a.shape[2], :a.shape[3]]) for a, b in zip(alone, batch)]


@pytest.fixture(scope="module")
def tiny_norm() -> SOFT:
    return realistic_tiny()


@pytest.mark.parametrize("size", [(96, 128), (100, 130)])
def test_features_do_not_depend_on_batch_padding(tiny_norm, size):
    """The issue's case (96x128 in a 160x224 batch) and an odd size whose grids do not divide by the landmark
    strides (partial landmark cells, at every stage)."""
    img = image(*size, seed=1)
    mate = image(160, 224, seed=2)
    with torch.no_grad():
        alone = tiny_norm(img)
        batch = tiny_norm(torch.cat([pad_to(img, 160, 224), mate]))
        mate_alone = tiny_norm(mate)
    errors = stage_errors(alone, batch)
    assert max(errors) < TOL, errors
    # outside its valid part an image's maps are 0; the batch mate (no padding) is unaffected
    for out, stride in zip(batch, STRIDES):
        h, w = math.ceil(size[0] / stride), math.ceil(size[1] / stride)
        assert out[0, :, h:].abs().max() == 0 and out[0, :, :, w:].abs().max() == 0
    assert max(stage_errors(mate_alone, batch, index=1)) < TOL
    # the fault the mask removes: the same batch without masking changes the image's features by tens of percent
    tiny_norm.mask_zero_padding = False
    try:
        with torch.no_grad():
            unmasked = tiny_norm(torch.cat([pad_to(img, 160, 224), mate]))
    finally:
        tiny_norm.mask_zero_padding = True
    assert min(stage_errors(alone, unmasked)) > 0.1


def test_unpadded_batches_take_the_unmasked_path_bitwise(tiny_norm, monkeypatch):
    """No padding, no masking code: the outputs are bitwise those of mask_zero_padding=False (and of the golden
    test, which runs the same unmasked path)."""
    batch = torch.cat([image(100, 130, seed=3), image(100, 130, seed=4)])
    with torch.no_grad():
        tiny_norm.mask_zero_padding = False
        try:
            expected = tiny_norm(batch)
        finally:
            tiny_norm.mask_zero_padding = True

        def no_region(*args, **kwargs):
            raise AssertionError("a ValidRegion was built for a batch without padding")

        monkeypatch.setattr(ValidRegion, "__init__", no_region)
        got = tiny_norm(batch)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("impl", ["reference", "ext"])
def test_every_solver_and_backend_masks_padding(solver, impl):
    if impl == "ext" and not ext_loader.ext_available("cpu"):
        pytest.skip("mmsoft._ext is not built for the CPU")
    model = realistic_tiny(landmark_solver=solver, attn_impl=impl, out_indices=(0, 1, 2))
    img = image(68, 100, seed=5)
    with torch.no_grad():
        alone = model(img)
        batch = model(torch.cat([pad_to(img, 128, 160), image(128, 160, seed=6)]))
    errors = stage_errors(alone, batch)
    assert max(errors) < TOL, errors


def test_training_mode_batch_statistics_and_gradients_ignore_padding():
    """Training mode: the stems' BatchNorm takes its statistics over the valid positions only, and the gradients of a
    loss on the valid outputs do not depend on the padding (two images of one size, padded differently)."""
    torch.manual_seed(0)
    images = torch.cat([image(64, 96, seed=7), image(64, 96, seed=8)])
    padded = pad_to(images, 96, 128)  # 32 zero rows and columns under / right of each image
    weights = [torch.randn(c, math.ceil(64 / s), math.ceil(96 / s)) for c, s in zip((64, 128, 320, 512), STRIDES)]
    grads, stats, outs = [], [], []
    for batch in (images, padded):
        model = realistic_tiny()
        model.train()
        out = model(batch)
        loss = sum((o[:, :, :w.shape[1], :w.shape[2]] * w).sum() for o, w in zip(out, weights))
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        stats.append({n: b for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))})
        outs.append([o[:, :, :w.shape[1], :w.shape[2]].detach() for o, w in zip(out, weights)])
    assert max(relative(a, b) for a, b in zip(*outs)) < TOL
    assert sorted(grads[0]) == sorted(grads[1])
    # A conv bias in front of training-mode BatchNorm has zero gradient (BN subtracts the mean): rounding noise only.
    before_bn = {n for n in grads[0] if re.fullmatch(r"stages\.\d\.patch_embed\.[036]\.bias", n)}
    scale = max(g.abs().max() for g in grads[0].values())
    assert len(before_bn) == 6 and all(grads[i][n].abs().max() < 1e-5 * scale for n in before_bn for i in (0, 1))
    worst = max(relative(grads[0][n], grads[1][n]) for n in grads[0] if n not in before_bn)
    assert worst < 1e-3, worst
    assert max(relative(stats[0][n], stats[1][n]) for n in stats[0]) < TOL


def test_unusual_sr_ratios_pad_each_stage_by_less_than_its_landmark_stride():
    """sr_ratios (7, 3, 5) used to pad a 50x70 input to lcm(32, 28, 24, 80) = 3360 px square; now each SOFT stage pads
    only its query map, to the next multiple of its sr_ratio, and padding is masked as for the published ratios."""
    arch = dict(embed_dims=[32, 64, 96, 128], num_heads=[1, 2, 3, 4], depths=[1, 1, 1, 1], sr_ratios=[7, 3, 5, 1])
    torch.manual_seed(0)
    model = SOFT(arch=arch, drop_path_rate=0.0)
    model.init_weights()
    model.eval()
    seen: dict[int, tuple[int, int]] = {}

    def record(stage: int):
        def hook(module, args, out) -> None:
            seen.setdefault(stage, tuple(args[0].shape[-2:]))  # the first call: the image alone
        return hook

    for i, stage in enumerate(model.stages[:3]):
        stage.blocks[0].attn.landmark_conv.register_forward_hook(record(i))
    img = image(50, 70, seed=10)
    with torch.no_grad():
        alone = model(img)
        batch = model(torch.cat([pad_to(img, 64, 96), image(64, 96, seed=11)]))
    assert [tuple(o.shape[-2:]) for o in alone] == [(math.ceil(50 / s), math.ceil(70 / s)) for s in STRIDES]
    for i, sr in enumerate((7, 3, 5)):
        grid = (math.ceil(50 / STRIDES[i]), math.ceil(70 / STRIDES[i]))
        assert seen[i] == tuple(math.ceil(g / sr) * sr for g in grid), (i, seen[i], grid)
    errors = stage_errors(alone, batch)
    assert max(errors) < TOL, errors


def test_trailing_zero_extents():
    x = torch.randn(4, 3, 10, 12)
    x[0, :, 7:] = 0                # 3 zero rows at the bottom
    x[1, :, :, 5:] = 0             # 7 zero columns on the right
    x[1, :, 4] = 0                 # a zero row inside the image is not padding
    x[2] = 0                       # an all-zero image keeps its size
    x[3, 1:, 9:] = 0               # zero in two channels only: not padding
    assert trailing_zero_extents(x) == [(7, 12), (10, 5), (10, 12), (10, 12)]
    assert ValidRegion.from_zero_padding(x[2:]) is None


def _preprocessed(scope: str, sizes: list[tuple[int, int]]) -> torch.Tensor:
    """Two random uint8 images of ``sizes`` as mmdet's DetDataPreprocessor (test time, ``pad_size_divisor=32``) or
    mmseg's SegDataPreProcessor (training, padded to its crop size) hand them to the model."""
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData

    gen = torch.Generator().manual_seed(12)
    raw = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8) for h, w in sizes]
    norm = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
    init_default_scope(scope)
    if scope == "mmdet":
        from mmdet.models.data_preprocessors import DetDataPreprocessor

        return DetDataPreprocessor(pad_size_divisor=32, **norm)(dict(inputs=raw), training=False)["inputs"]
    from mmseg.models.data_preprocessor import SegDataPreProcessor
    from mmseg.structures import SegDataSample

    samples = [SegDataSample(gt_sem_seg=PixelData(data=torch.zeros(1, h, w, dtype=torch.uint8))) for h, w in sizes]
    return SegDataPreProcessor(size=(128, 160), **norm)(dict(inputs=raw, data_samples=samples), training=True)["inputs"]


@pytest.mark.parametrize("scope", ["mmdet", "mmseg"])
def test_mmdet_and_mmseg_preprocessors_padding_is_masked(scope):
    """The padding as mmdet's / mmseg's data preprocessors make it (normalise, then zero-pad the batch): the small
    image's features in the batch are those of the image alone, without changing the detector / segmentor."""
    batch = _preprocessed(scope, [(72, 100), (128, 160)])
    assert batch.shape[-2:] == (128, 160) and batch[0, :, 72:].abs().max() == 0
    assert batch[0, :, :72, :100].abs().min() > 0  # no real pixel normalises to exactly 0
    model = realistic_tiny()
    with torch.no_grad():
        errors = stage_errors(model(batch[:1, :, :72, :100]), model(batch))
    assert max(errors) < TOL, errors
