"""The SOFT backbone: presets, shapes, gradients, freezing and argument checking."""
import math

import pytest
import torch
from torch import nn

from mmsoft.models import SOFT

# Published ImageNet parameter counts (millions, truncated as the papers print them).
PUBLISHED_PARAMS_M = {"tiny": 13, "small": 24, "medium": 45, "large": 64, "huge": 87}


def imagenet_model_params(backbone: SOFT, num_classes: int = 1000) -> int:
    """Backbone parameters plus what the ImageNet model adds: the classifier, the cls token and its
    position-embedding slot."""
    c = backbone.embed_dims[-1]
    return sum(p.numel() for p in backbone.parameters()) + (c * num_classes + num_classes) + c + c


@pytest.mark.parametrize("arch", list(PUBLISHED_PARAMS_M))
def test_preset_params_and_shapes_on_odd_input(arch):
    torch.manual_seed(0)
    model = SOFT(arch=arch, drop_path_rate=0.0).eval()
    total = imagenet_model_params(model)
    print(f"SOFT-{arch}: backbone {sum(p.numel() for p in model.parameters()):,} params, "
          f"ImageNet model {total:,} ({total / 1e6:.2f}M) vs published {PUBLISHED_PARAMS_M[arch]}M")
    assert math.floor(total / 1e6) == PUBLISHED_PARAMS_M[arch]
    h, w = (333, 517) if arch in ("tiny", "small") else (97, 65)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    assert len(outs) == 4
    for out, stride, c in zip(outs, (4, 8, 16, 32), model.embed_dims):
        assert out.shape == (1, c, math.ceil(h / stride), math.ceil(w / stride))
        assert torch.isfinite(out).all()


def test_reference_small_depths_do_not_match_published_count():
    # The reference code's soft_small preset uses depths [1, 3, 20, 4]; that is not the 24M model.
    ref_small = SOFT(arch=dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], depths=[1, 3, 20, 4]))
    assert math.floor(imagenet_model_params(ref_small) / 1e6) == 38


@pytest.mark.parametrize("size", [(64, 96), (333, 517), (32, 32)])
def test_padding_is_invisible_to_padded_inputs(size):
    """An input already padded to 32 goes through unchanged; odd sizes give ResNet-like sizes."""
    torch.manual_seed(0)
    model = SOFT(arch="tiny", out_indices=(0, 3)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs = model(x)
    assert [o.shape[-2:] for o in outs] == [(math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in (4, 32)]
    if size[0] % 32 == 0 and size[1] % 32 == 0:
        # feeding the explicit zero-padded version of a smaller image gives the same result as the
        # backbone padding it itself
        small = x[..., : size[0] - 5, : size[1] - 7]
        with torch.no_grad():
            a = model(small)[0]
            b = model(nn.functional.pad(small, (0, 7, 0, 5)))[0][..., : a.shape[-2], : a.shape[-1]]
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("sym_norm", [True, False])
def test_gradients_reach_every_parameter(sym_norm):
    torch.manual_seed(0)
    model = SOFT(arch="tiny", sym_norm=sym_norm, drop_path_rate=0.0)
    model.init_weights()
    outs = model(torch.randn(2, 3, 64, 96))
    sum(o.float().pow(2).mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"all-zero gradient for {zero}"


def test_sym_norm_changes_the_function():
    torch.manual_seed(0)
    a = SOFT(arch="tiny", sym_norm=True).eval()
    b = SOFT(arch="tiny", sym_norm=False).eval()
    b.load_state_dict(a.state_dict())  # same parameters, only the normalisation differs
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(a(x)[0], b(x)[0])


def test_with_cp_gives_same_output_and_gradients():
    torch.manual_seed(0)
    plain = SOFT(arch="tiny", drop_path_rate=0.0)
    ckpt = SOFT(arch="tiny", drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for m in (plain, ckpt):
        m.train()
        sum(o.sum() for o in m(x)).backward()
        grads.append(m.stages[1].blocks[0].attn.q.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_frozen_stages_and_norm_eval():
    model = SOFT(arch="tiny", frozen_stages=1, norm_eval=True)
    model.train()
    stage0 = list(model.stages[0].parameters())
    assert all(not p.requires_grad for p in stage0)
    assert all(p.requires_grad for p in model.stages[1].parameters())
    assert not model.stages[0].training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    stem_only = SOFT(arch="tiny", frozen_stages=0)
    stem_only.train()
    assert not any(p.requires_grad for p in stem_only.stages[0].patch_embed.parameters())
    assert not stem_only.stages[0].pos_embed.requires_grad
    assert all(p.requires_grad for p in stem_only.stages[0].blocks.parameters())


def test_out_indices_subset():
    model = SOFT(arch="tiny", out_indices=(1, 2)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 320]


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(arch="gigantic"), ValueError, "unknown SOFT arch"),
    (dict(out_indices=(0, 4)), ValueError, "out_indices"),
    (dict(out_indices=()), ValueError, "out_indices"),
    (dict(arch=dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 7, 16], depths=[1, 1, 1, 1])),
     ValueError, "not divisible by num_heads"),
    (dict(arch=dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16])), ValueError, "missing"),
    (dict(arch=dict(embed_dims=[64, 128, 320], num_heads=[2, 4, 10], depths=[1, 1, 1])), ValueError,
     "4 values"),
    (dict(arch=dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], depths=[1, 1, 1, 1], heads=3)),
     ValueError, "unknown keys"),
    (dict(frozen_stages=5), ValueError, "frozen_stages"),
])
def test_bad_arguments_raise_clear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SOFT(**kwargs)


def test_bad_inputs_raise_clear_errors():
    model = SOFT(arch="tiny").eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
