"""How much an image's backbone features change when its batch mates force padding, and what masking it costs.

mmdet / mmseg stack a batch by zero-padding each image at the bottom / right after normalisation. This compares an
image alone (default 96x128) with the same image zero-padded to a larger batch size (default 160x224), features
cropped back to the image's own size, for SOFT-Tiny-Norm (with and without ``mask_zero_padding``), mmdet's PVTv2-B0
and ResNet-18 (built from mmdet's registry, randomly initialised with a fixed seed, eval mode). Printed per stage:
max |alone - padded| / max |alone| over the positions at least ``--margin`` pixels away from the padded edge, and
over all of the image's positions. Then the forward time of SOFT-T on a batch of two ``--timing-size`` images, one of
them padded (``--timing-pad`` zero rows and columns), with and without the mask, and on the same batch unpadded.
``--soft-checkpoint`` loads trained SOFT-T weights instead of the random initialisation.

Example::

    python tools/analysis/padding_invariance.py --size 96x128 --padded 160x224 --margin 32
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

STRIDES = (4, 8, 16, 32)


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def build_backbones(seed: int, soft_checkpoint: str | None = None) -> dict[str, nn.Module]:
    """SOFT-T-Norm (masked / unmasked: the same weights; randomly initialised or from ``soft_checkpoint``), mmdet's
    PVTv2-B0 and ResNet-18 (randomly initialised), eval mode."""
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmdet.utils import register_all_modules

    from mmsoft.models import SOFT

    register_all_modules(init_default_scope=False)
    torch.manual_seed(seed)
    init_cfg = dict(type="Pretrained", checkpoint=soft_checkpoint) if soft_checkpoint else None
    soft = SOFT(arch="tiny", drop_path_rate=0.0, init_cfg=init_cfg)
    soft.init_weights()
    unmasked = SOFT(arch="tiny", drop_path_rate=0.0, mask_zero_padding=False)
    unmasked.load_state_dict(soft.state_dict())
    models = {"SOFT-T-Norm (mask_zero_padding=True)": soft, "SOFT-T-Norm (mask_zero_padding=False)": unmasked}
    for name, cfg in (("mmdet PVTv2-B0", dict(type="PyramidVisionTransformerV2", embed_dims=32,
                                                num_layers=[2, 2, 2, 2])),
                      ("mmdet ResNet-18", dict(type="ResNet", depth=18, out_indices=(0, 1, 2, 3)))):
        torch.manual_seed(seed)
        model = MMDET_MODELS.build(cfg)
        model.init_weights()
        models[name] = model
    for model in models.values():
        model.eval()  # (mmdet's ResNet.train does not return the module)
    return models


def test_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A normalised-looking image (smooth structure plus noise; no exactly-zero pixel): ``(1, 3, h, w)``."""
    gen = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.randn(1, 3, h // 8 + 1, w // 8 + 1, generator=gen), size=(h, w), mode="bilinear")
    return coarse + 0.3 * torch.randn(1, 3, h, w, generator=gen)


def padding_change(model: nn.Module, img: torch.Tensor, padded_hw: tuple[int, int], margin: int) -> list[tuple]:
    """Per stage ``(away_from_edge, everywhere)``: relative change of the image's map when zero-padded to
    ``padded_hw`` (next to a batch mate of that size), against the image alone."""
    h, w = img.shape[-2:]
    padded = F.pad(img, (0, padded_hw[1] - w, 0, padded_hw[0] - h))
    mate = test_image(*padded_hw, seed=1)
    with torch.no_grad():
        alone = model(img)
        batch = model(torch.cat([padded, mate]))
    out = []
    for a, b, stride in zip(alone, batch, STRIDES):
        b = b[:1, :, :a.shape[2], :a.shape[3]]
        # cells whose pixels all lie at least `margin` px above / left of the image's padded edge
        rows, cols = max((h - margin) // stride, 1), max((w - margin) // stride, 1)
        scale = a.abs().max()
        far = (a - b)[:, :, :rows, :cols].abs().max() / scale
        out.append((far.item(), ((a - b).abs().max() / scale).item()))
    return out


def forward_seconds(cases: list[tuple[str, nn.Module, torch.Tensor]], repeat: int) -> dict[str, tuple[float, float]]:
    """Per case, the median wall-clock and process CPU seconds of a forward pass, after one warm-up run each. The
    cases take turns, so that a change in the machine's load affects them alike; CPU time is the steadier figure on a
    shared machine."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in cases}
    with torch.no_grad():
        for _, model, batch in cases:
            model(batch)
        for _ in range(repeat):
            for name, model, batch in cases:
                wall, cpu = time.perf_counter(), time.process_time()
                model(batch)
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=_size, default=(96, 128), help="the image alone, HxW")
    parser.add_argument("--padded", type=_size, default=(160, 224), help="the padded batch size, HxW")
    parser.add_argument("--margin", type=int, default=32, help="compare positions this many px from the padded edge")
    parser.add_argument("--timing-size", type=_size, default=(512, 512), help="batch size of the timing runs, HxW")
    parser.add_argument("--timing-pad", type=int, default=128, help="zero rows and columns of the padded image")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads for the timing runs (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--soft-checkpoint", help="SOFT-T weights (reference, mmsoft or whole-detector checkpoint)")
    args = parser.parse_args(argv)

    models = build_backbones(args.seed, args.soft_checkpoint)
    img = test_image(*args.size, seed=0)
    print(f"Relative change of an image's features, {args.size[0]}x{args.size[1]} alone vs zero-padded to "
          f"{args.padded[0]}x{args.padded[1]}: max |difference| / max |alone|, at >= {args.margin} px from the "
          "padded edge (all positions in brackets)")
    print("| backbone | stage 1 | stage 2 | stage 3 | stage 4 |")
    print("|---|---:|---:|---:|---:|")
    for name, model in models.items():
        cells = [f"{far:.1e} ({everywhere:.1e})" if far < 1e-3 else f"{100 * far:.0f}% ({100 * everywhere:.0f}%)"
                 for far, everywhere in padding_change(model, img, args.padded, args.margin)]
        print(f"| {name} | " + " | ".join(cells) + " |")

    if args.skip_timing:
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    th, tw = args.timing_size
    full = torch.cat([test_image(th, tw, seed=2), test_image(th, tw, seed=3)])
    padded = full.clone()
    padded[1, :, th - args.timing_pad:] = 0
    padded[1, :, :, tw - args.timing_pad:] = 0
    masked = next(m for n, m in models.items() if "True" in n)
    unmasked = next(m for n, m in models.items() if "False" in n)
    cases = [("padded batch, mask_zero_padding=True", masked, padded),
             ("padded batch, mask_zero_padding=False", unmasked, padded),
             ("unpadded batch, mask_zero_padding=True", masked, full),
             ("unpadded batch, mask_zero_padding=False", unmasked, full)]
    print(f"\nSOFT-T-Norm forward, batch of 2 x {th}x{tw} (padded: the second image has {args.timing_pad} zero rows "
          f"and columns), {torch.get_num_threads()} threads, median of {args.repeat}")
    print("| case | wall seconds | CPU seconds |")
    print("|---|---:|---:|")
    for name, (wall, cpu) in forward_seconds(cases, args.repeat).items():
        print(f"| {name} | {wall:.3f} | {cpu:.3f} |")


if __name__ == "__main__":
    main()
