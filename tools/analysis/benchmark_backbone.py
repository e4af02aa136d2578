"""Benchmark whole backbones / RetinaNet detectors: SOFT-Tiny/Small-Norm (per landmark solver) vs mmdet's PVT-T,
PVTv2-B1 and Swin-T, side by side in one run.

Models: ``soft-t`` / ``soft-s`` from ``configs/soft/retinanet_soft-{t,s}-norm_fpn_1x_coco.py`` (one entry per
``--solvers`` value, the backbone's ``landmark_solver``), ``pvt-t`` / ``pvtv2-b1`` / ``swin-t`` from the RetinaNet
configs that ship with mmdet (``mmdet::pvt/retinanet_pvt-t_fpn_1x_coco.py``, ``.../retinanet_pvtv2-b1_fpn_1x_coco.py``,
``mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py``), all randomly initialised (``init_cfg=None``: nothing is
downloaded) unless ``--soft-checkpoint soft-t=PATH`` gives a SOFT model its weights. Weights do not change the cost,
except for ``newton_lowrank``, whose time depends on the spectra of the landmark kernels (it falls back to the
eigendecomposition on flat ones, as a random initialisation has). ``--what backbone`` times the backbone alone,
``--what detector`` the whole RetinaNet: ``forward`` is ``model(..., mode='predict')`` (backbone, FPN, head, box
decoding and NMS) under ``torch.no_grad`` (as mmengine's test loop); ``forward+backward`` is ``mode='loss'`` with
three ground-truth boxes plus ``backward``. Inputs: batch 1, an ``H x W`` image zero-padded to a multiple of 32, as
mmdet's data preprocessor does (800x1333 runs as 800x1344): ``--input photo`` (default) a photograph (matplotlib's
sample ``grace_hopper.jpg``, shipped with matplotlib) resized to ``H x W`` and normalised with the ImageNet mean / std
of the configs, ``--input noise`` standard normal pixels. The input changes the landmark kernels' spectra, hence the
time of ``newton_lowrank`` (noise makes stage 1's landmarks unlike a photograph's); for the other models' backbones it
changes nothing, for a detector's forward the post-processing load (how many boxes the head's scores pass to NMS).
``--soft-norm-eval`` keeps the SOFT backbones' BatchNorms in eval mode in ``forward+backward`` (mmdet's
``norm_eval=True``): with the seeded test weights, whose BN running statistics are arbitrary, BN in training mode
rescales the stem's features and flattens the landmark spectra.

Every case runs in a fresh subprocess. Time: median (JSON ``time_s``) and best (``best_s``, shown in the tables: the
better estimate on a machine shared with other jobs) of ``--repeat`` runs after one warm-up run at 256x256 (lazy
initialisation; a warm-up at full size would double the cost of minute-long CPU cases). Peak memory:
  * CPU: peak resident set size during the timed runs minus the resident size just before them (model built, warm-up
    done; Linux VmHWM reset through /proc/self/clear_refs, else the process' peak so far, warm-up included). Counts
    every allocation (torch, MKL scratch), not only tensors.
  * CUDA: ``torch.cuda.max_memory_allocated`` minus the bytes allocated before the timed runs.
Landmark-solver share ("solver %"): time spent inside the landmark solver (the Newton-Schulz iterations for
``newton``, the float64 eigendecomposition and filter for ``newton_eigh``, the residual form applied to the
right-hand side for ``newton_thin``, the float64 Cholesky factorisation + solves for ``cholesky``, the low-rank
factors with any fallback eigendecompositions for ``newton_lowrank``; with forward+backward also ``newton_thin``'s
backward recomputation, not the cheap closed-form backward products) over the wall time of one more run after the
timed ones, under ``torch.profiler``: the solvers mark their work with the range ``mmsoft::landmark_solve``, counted
as host time on the CPU and as the device time of its kernels on CUDA (``tools/analysis/benchlib/profiler_ranges.py``;
a range nested in another is counted once). The rest of the attention (A^T V, A W, the landmark kernel) is not
counted.

``--accuracy`` compares the solvers on real activations: demo images (``data/demo/coco/val``) upscaled to 800x1333, the
demo-trained SOFT-Tiny-Norm backbone when ``work_dirs/demo_retinanet/iter_600.pth`` exists (else a randomly
initialised one, said so in the output); per attention layer the max |difference| of the attention output on the
same inputs as the Newton run, and end to end the max |difference| of the backbone's four output maps, both against
float32 ``newton`` (what the default computes) and against the exact 20-step function (``newton`` in float64: the
layer's inputs in float64, end to end a float64 copy of the backbone).

Example (what fits on a 2-core CPU in ~15 minutes)::

    python tools/analysis/benchmark_backbone.py --what detector --sizes 512x512 800x1333 --mode forward \\
        --models soft-t pvt-t pvtv2-b1 swin-t --solvers newton newton_eigh --repeat 1 --accuracy

writes ``<out>/benchmark_<what>_<device>.json`` and ``.png`` (latency vs input pixels) and prints markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchlib.case_subprocess import run_case_subprocess
from benchlib.process_memory import PeakMemory
from benchlib.profiler_ranges import solver_share

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIGS = {
    "soft-t": str(ROOT / "configs/soft/retinanet_soft-t-norm_fpn_1x_coco.py"),
    "soft-s": str(ROOT / "configs/soft/retinanet_soft-s-norm_fpn_1x_coco.py"),
    "pvt-t": "mmdet::pvt/retinanet_pvt-t_fpn_1x_coco.py",
    "pvtv2-b1": "mmdet::pvt/retinanet_pvtv2-b1_fpn_1x_coco.py",
    "swin-t": "mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py",
}
MODES = ("forward", "forward+backward")
#: Pseudo-solver for ``--solvers``: the landmark solve skipped (``P x = x``; NOT the SOFT function, its outputs are
#: meaningless). Everything else of the model runs as with a real solver, so its time is the lower bound that no
#: landmark solver can beat: what SOFT costs without the ``P`` it needs.
NO_SOLVE = "no-solve"
WARMUP_SIZE = (256, 256)
INPUTS = ("photo", "noise")
#: The photograph of ``--input photo``: a sample image that ships inside matplotlib (a dependency of mmdet).
PHOTO_SAMPLE = "grace_hopper.jpg"
#: Normalisation of the RetinaNet configs' data preprocessor (ImageNet mean / std, RGB, 0-255).
PIXEL_MEAN, PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
DEMO_CKPT = ROOT / "work_dirs/demo_retinanet/iter_600.pth"
DEMO_CONFIG = ROOT / "configs/demo/retinanet_soft-t-norm_fpn_demo.py"
DEMO_IMAGES = ROOT / "data/demo/coco/val"


def parse_size(text: str) -> tuple[int, int]:
    """``'800x1333'`` -> ``(800, 1333)`` (H x W)."""
    match = re.fullmatch(r"(\d+)[x,](\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 800x1333; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def parse_checkpoint(text: str) -> tuple[str, str]:
    """``'soft-t=PATH'`` -> ``('soft-t', 'PATH')`` for a SOFT model of :data:`MODEL_CONFIGS` and an existing file."""
    name, sep, path = text.partition("=")
    if not sep or not name.startswith("soft") or name not in MODEL_CONFIGS:
        soft = [model for model in MODEL_CONFIGS if model.startswith("soft")]
        raise argparse.ArgumentTypeError(f"expected MODEL=PATH with MODEL one of {soft}, got {text!r}")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"checkpoint for {name} not found: {path}")
    return name, path


class MergeDict(argparse.Action):
    """Collect ``(key, value)`` pairs of an ``nargs='+'`` option into one dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, {**getattr(namespace, self.dest), **dict(values)})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    from mmsoft.ops.landmark_solvers import SOLVERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1].split("Example")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(512, 512), (800, 1333), (1024, 2048)],
                        help="input sizes HxW (default 512x512 800x1333 1024x2048)")
    parser.add_argument("--models", nargs="+", default=list(MODEL_CONFIGS), choices=list(MODEL_CONFIGS))
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=[*SOLVERS, NO_SOLVE],
                        help=f"landmark solvers of the SOFT models (each is its own row); {NO_SOLVE!r}: the solve "
                             "skipped (not the SOFT function), the lower bound any solver could reach")
    parser.add_argument("--mode", nargs="+", default=["forward"], choices=MODES)
    parser.add_argument("--soft-checkpoint", nargs="+", default={}, type=parse_checkpoint, action=MergeDict,
                        metavar="MODEL=PATH",
                        help="weights for a SOFT model (e.g. soft-t=soft_tiny_norm.pth; reference or mmsoft layout): "
                             "the time of newton_lowrank depends on the landmark kernels' spectra, so measure it on "
                             "the checkpoint you use (default: random initialisation)")
    parser.add_argument("--input", default="photo", choices=INPUTS,
                        help="photo: a photograph resized to each size (default); noise: standard normal pixels")
    parser.add_argument("--soft-norm-eval", action="store_true",
                        help="forward+backward with the SOFT backbones' BatchNorms in eval mode (norm_eval=True)")
    parser.add_argument("--what", default="detector", choices=("backbone", "detector"))
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per case (median and best kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed per case (its subprocess)")
    parser.add_argument("--accuracy", action="store_true", help="also compare the solvers on real activations")
    parser.add_argument("--accuracy-images", type=int, default=1, help="demo images for --accuracy")
    parser.add_argument("--skip-benchmark", action="store_true", help="only --accuracy")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="run nothing: combine the results of these reports (earlier runs of this tool, e.g. "
                             "SOFT rows after a kernel change beside unchanged baselines) into one report, tables "
                             "and plot; a later report's case replaces an earlier one's")
    parser.add_argument("--out", default="work_dirs/benchmark_backbone", help="output directory")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- worker side
def load_model_config(name: str):
    """The mmengine ``Config`` of model ``name``: mmsoft's own config file, or, for ``mmdet::...``, the config that
    ships inside the installed mmdet (``mmengine.hub.get_config``)."""
    from mmengine.config import Config
    from mmengine.hub import get_config

    config = MODEL_CONFIGS[name]
    return get_config(config) if "::" in config else Config.fromfile(config)


def register_no_solve() -> None:
    """Add :data:`NO_SOLVE` to this process' landmark-solver table (the benchmark's worker process only)."""
    from mmsoft.ops.landmark_solvers import SOLVERS, LandmarkSolver

    SOLVERS[NO_SOLVE] = LandmarkSolver(apply=lambda mat, x, num_iters: x)


def build_model(name: str, solver: str, what: str, checkpoint: str | None = None):
    """The detector (or its backbone) of ``name`` in eval mode: randomly initialised, or with ``checkpoint`` (SOFT
    models only: a reference or mmsoft SOFT checkpoint, loaded strictly into the backbone)."""
    from mmengine.registry import MODELS, init_default_scope

    from mmsoft.utils import prepare_scope

    cfg = load_model_config(name)
    cfg.model.backbone.init_cfg = None if checkpoint is None else dict(type="Pretrained", checkpoint=checkpoint)
    cfg.model.backbone.pop("pretrained", None)
    if name.startswith("soft"):
        if solver == NO_SOLVE:
            register_no_solve()
        cfg.model.backbone.landmark_solver = solver
    init_default_scope(prepare_scope(cfg))
    model = MODELS.build(cfg.model.backbone if what == "backbone" else cfg.model)
    if checkpoint is not None:
        model.init_weights()
    model.eval()  # not `return model.eval()`: mmdet's SwinTransformer.train() override returns None
    return model


def photo_input(size: tuple[int, int]):
    """:data:`PHOTO_SAMPLE` resized (bilinear) to ``size`` (H x W), normalised: ``(1, 3, H, W)`` float32."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data(PHOTO_SAMPLE)) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    img = F.interpolate(torch.from_numpy(pixels).permute(2, 0, 1)[None], size=size, mode="bilinear",
                        align_corners=False)
    return (img - torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(PIXEL_STD).view(1, 3, 1, 1)


def _detector_inputs(size: tuple[int, int], device, backward: bool, in_channels: int = 3, source: str = "noise"):
    import torch
    import torch.nn.functional as F
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    h, w = size
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    if source == "photo":
        if in_channels != 3:
            raise ValueError(f"--input photo needs a model with 3 input channels, this one takes {in_channels}")
        img = F.pad(photo_input(size), (0, pw - w, 0, ph - h)).to(device)
    else:
        gen = torch.Generator().manual_seed(0)
        img = torch.randn(1, in_channels, ph, pw, generator=gen).to(device)
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(ph, pw),
                                         batch_input_shape=(ph, pw), scale_factor=(1.0, 1.0)))
    if backward:
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[10.0, 20.0, 200.0, 220.0], [w * 0.5, h * 0.3, w * 0.9, h * 0.8],
                                 [w * 0.1, h * 0.6, w * 0.3, h * 0.95]], device=device),
            labels=torch.tensor([0, 5, 17], device=device))
    return img, [sample]


def make_step(model, what: str, backward: bool, device, source: str = "noise") -> Callable[[tuple[int, int]], None]:
    """One run of ``model`` on an input of a given size (``source``: ``'photo'`` or ``'noise'``, see ``--input``):
    ``forward`` under ``torch.no_grad`` (the detector in ``predict`` mode), or ``forward+backward`` (the detector's
    losses, the backbone's mean square outputs), waited for on CUDA."""
    import torch

    from mmsoft.utils.channel_check import model_input_channels

    in_channels = model_input_channels(model)

    def step(size: tuple[int, int]) -> None:
        img, samples = _detector_inputs(size, device, backward, in_channels, source)
        if backward:
            model.zero_grad(set_to_none=True)
            if what == "detector":
                losses = model(img, samples, mode="loss")
                total = sum(sum(v) if isinstance(v, list) else v for k, v in losses.items() if "loss" in k)
            else:
                total = sum(o.float().square().mean() for o in model(img))
            total.backward()
        else:
            with torch.no_grad():
                model(img, samples, mode="predict") if what == "detector" else model(img)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def timed_runs(step: Callable[[], None], repeat: int) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``step``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Time and measure one (model, solver, size, mode) case in this (fresh) process: one warm-up run at
    :data:`WARMUP_SIZE`, ``repeat`` timed runs with their peak memory, then (SOFT models) one profiled run for the
    landmark solver's share."""
    import torch

    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    backward = spec["mode"] == "forward+backward"
    model = build_model(spec["model"], spec["solver"], spec["what"], spec["checkpoint"]).to(device)
    model.train(backward)
    if backward and spec.get("norm_eval") and spec["model"].startswith("soft"):
        backbone = model if spec["what"] == "backbone" else model.backbone
        backbone.norm_eval = True
        backbone.train(True)  # its train() override puts the BatchNorms in eval mode
    step = make_step(model, spec["what"], backward, device, spec.get("input", "noise"))
    warm = timed_runs(lambda: step(WARMUP_SIZE), 1)[0]
    size = tuple(spec["size"])
    with PeakMemory(cuda, device) as mem:
        times = timed_runs(lambda: step(size), spec["repeat"])
    result = {**spec, "time_s": statistics.median(times), "best_s": min(times), "times_s": times, "warmup_s": warm,
              "peak_bytes": mem.peak_bytes, "memory_method": mem.method,
              "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if spec["model"].startswith("soft"):
        result.update(solver_share(lambda: step(size), cuda))
    return result


# ----------------------------------------------------------------------------------------------- accuracy
def _demo_backbone(device: str):
    """SOFT-Tiny-Norm backbone (demo-trained when its checkpoint exists), a description, and the image mean / std."""
    import torch

    if DEMO_CKPT.exists():
        from mmengine.config import Config
        from mmengine.registry import MODELS, init_default_scope
        from mmengine.runner import load_checkpoint

        from mmsoft.checkpoint import use_safe_checkpoint_loading
        from mmsoft.utils import prepare_scope

        cfg = Config.fromfile(str(DEMO_CONFIG))
        init_default_scope(prepare_scope(cfg))
        detector = MODELS.build(cfg.model)
        use_safe_checkpoint_loading()  # explicitly weights-only with mmengine's allowlist, verified
        load_checkpoint(detector, str(DEMO_CKPT), map_location="cpu")
        backbone, weights = detector.backbone, f"demo-trained ({DEMO_CKPT.relative_to(ROOT)})"
        mean, std = detector.data_preprocessor.mean.view(1, -1, 1, 1), detector.data_preprocessor.std.view(1, -1, 1, 1)
    else:
        from mmsoft.models.backbones.soft import SOFT

        torch.manual_seed(0)
        backbone, weights = SOFT(arch="tiny", init_cfg=None), "random init (seed 0): no demo checkpoint found"
        backbone.init_weights()
        mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
        std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    return backbone.to(device).eval(), weights, mean, std


def _diff(out, ref) -> dict[str, float]:
    diff = (out.double() - ref.double()).abs().max().item()
    return {"max_abs": diff, "rel": diff / max(ref.double().abs().max().item(), 1e-30)}


def _set_solver(model, solver: str) -> None:
    for m in model.modules():
        if hasattr(m, "landmark_solver"):
            m.landmark_solver = solver


def _image_input(path: Path, mean, std, device: str):
    """A demo image upscaled to 800x1333, normalised and zero-padded to 800x1344 as mmdet pads."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    img = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    img = F.interpolate(img, size=(800, 1333), mode="bilinear", align_corners=False)
    return F.pad((img - mean) / std, (0, 11, 0, 0)).to(device)


def _forward_capturing_attention(backbone, img) -> tuple[Any, list[tuple]]:
    """``backbone(img)`` with ``'newton'`` and, for every SOFT attention call in it, ``(q, k, v, kwargs, out)``."""
    import torch

    import mmsoft.models.layers.soft_attention as attn_mod

    captured: list[tuple] = []
    original = attn_mod.soft_attention

    def capture(q, k, v, **kwargs):
        out = original(q, k, v, **kwargs)
        captured.append((q, k, v, kwargs, out))
        return out

    _set_solver(backbone, "newton")
    attn_mod.soft_attention = capture
    try:
        with torch.no_grad():
            return backbone(img), captured
    finally:
        attn_mod.soft_attention = original


def accuracy(num_images: int, solvers: list[str], device: str) -> dict[str, Any]:
    """Solvers on real activations of SOFT-Tiny-Norm at 800x1333, per attention layer and end to end, against two
    references: float32 ``'newton'`` (what the default runs) and the exact 20-step function (``'newton'`` in
    float64, per layer on the same float32 inputs; end to end a float64 copy of the backbone)."""
    import copy

    import torch

    from mmsoft.ops import soft_attention

    backbone, weights, mean, std = _demo_backbone(device)
    files = sorted(DEMO_IMAGES.glob("*.png"))[:num_images]
    if not files:
        raise FileNotFoundError(f"no demo images under {DEMO_IMAGES}: run python tools/misc/make_demo_data.py")
    exact_backbone = copy.deepcopy(backbone).double()
    _set_solver(exact_backbone, "newton")
    names = list(dict.fromkeys(["newton", *solvers]))
    layers: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
    outputs: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
    for path in files:
        img = _image_input(path, mean, std, device)
        ref_out, captured = _forward_capturing_attention(backbone, img)
        with torch.no_grad():
            exact_out = exact_backbone(img.double())
            exact_layers = [soft_attention(q.double(), k.double(), v.double(), **{**kw, "solver": "newton"})
                            for q, k, v, kw, _ in captured]
            for solver in names:
                for i, ((q, k, v, kwargs, ref), exact) in enumerate(zip(captured, exact_layers)):
                    out = ref if solver == "newton" else soft_attention(q, k, v, **{**kwargs, "solver": solver})
                    layers[solver].append({"image": path.name, "layer": i, "m": k.shape[-2], "n": q.shape[-2],
                                           "vs_newton": _diff(out, ref), "vs_exact": _diff(out, exact)})
                _set_solver(backbone, solver)
                for stage, (a, b, e) in enumerate(zip(backbone(img), ref_out, exact_out)):
                    outputs[solver].append({"image": path.name, "stage": stage, "vs_newton": _diff(a, b),
                                            "vs_exact": _diff(a, e)})
    _set_solver(backbone, "newton")
    return {"weights": weights, "images": [p.name for p in files], "input": "800x1333 (padded to 800x1344)",
            "per_layer": layers, "backbone_outputs": outputs}


# ----------------------------------------------------------------------------------------------- driver side
def run_in_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one case in a fresh interpreter; errors and timeouts become entries with an ``error`` field."""
    return run_case_subprocess(__file__, spec, timeout, cwd=ROOT)


def label(result: dict[str, Any]) -> str:
    """Row label: the model, plus the solver for SOFT models (and ``norm_eval`` when set)."""
    if not result["model"].startswith("soft"):
        return result["model"]
    return f"{result['model']} ({result['solver']}{', norm_eval' if result.get('norm_eval') else ''})"


def markdown_table(results: list[dict[str, Any]], sizes: list[tuple[int, int]], mode: str) -> str:
    """Model x size table of best time (s), peak memory (MiB) and solver share for one mode."""
    head = "| model | params (M) | " + " | ".join(f"{h}x{w} best (s) | peak (MiB) | solver %" for h, w in sizes) + " |"
    rows = [head, "|---|---:|" + "---:|---:|---:|" * len(sizes)]
    for name in dict.fromkeys(label(r) for r in results if r["mode"] == mode):
        cells, params = [], "-"
        for size in sizes:
            r = next((x for x in results if label(x) == name and x["mode"] == mode and tuple(x["size"]) == size), None)
            if r is None:
                cells.append("not run | - | -")
            elif "error" in r:
                cells.append(f"{r['error'][:40]} | - | -")
            else:
                params = f"{r['params_m']:.1f}"
                share = f"{100 * r['solver_share']:.0f}" if r["model"].startswith("soft") else "-"
                cells.append(f"{r['best_s']:.2f} | {r['peak_bytes'] / 2**20:,.0f} | {share}")
        rows.append(f"| {name} | {params} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def accuracy_table(acc: dict[str, Any]) -> str:
    """Markdown summary of the accuracy section: max relative differences (max |diff| / max |reference|)."""
    rows = [f"Accuracy, SOFT-Tiny-Norm backbone, {acc['weights']}, {len(acc['images'])} demo image(s) at "
            f"{acc['input']}; max |diff| / max |reference| over attention layers and over the four output maps, "
            "against float32 'newton' and against the exact 20-step function (float64 'newton'):", "",
            "| solver | layers vs newton fp32 | layers vs exact | outputs vs newton fp32 | outputs vs exact |",
            "|---|---:|---:|---:|---:|"]
    for solver, layers in acc["per_layer"].items():
        outs = acc["backbone_outputs"][solver]
        cells = [max(x[ref]["rel"] for x in rows_) for rows_ in (layers, outs) for ref in ("vs_newton", "vs_exact")]
        rows.append(f"| {solver} | " + " | ".join(f"{c:.3g}" for c in cells) + " |")
    return "\n".join(rows)


def plot(results: list[dict[str, Any]], modes: list[str], path: Path, title: str) -> None:
    """Log-log plot of latency vs input pixels, one line per model/solver and one panel per mode."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7 * len(modes), 5))
    axes = fig.subplots(1, len(modes), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for name in dict.fromkeys(label(r) for r in results):
            pts = sorted((r["size"][0] * r["size"][1], r["best_s"]) for r in results
                         if label(r) == name and r["mode"] == mode and "error" not in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input pixels (H x W)")
        ax.set_ylabel("latency, best of --repeat (s)")
        ax.set_title(mode)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def case_specs(args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    """Every (size, mode, model, solver) case of the command line, in the order they run."""
    return [{"device": device, "model": model, "solver": solver, "size": list(size), "mode": mode,
             "what": args.what, "repeat": args.repeat, "threads": args.threads,
             "checkpoint": args.soft_checkpoint.get(model), "input": args.input,
             "norm_eval": args.soft_norm_eval and model.startswith("soft") and mode == "forward+backward"}
            for size in args.sizes for mode in args.mode for model in args.models
            for solver in (args.solvers if model.startswith("soft") else ["-"])]


def run_cases(specs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """Run each case in its own subprocess, printing one line per finished case."""
    results = []
    for spec in specs:
        t0 = time.time()
        result = run_in_subprocess(spec, timeout)
        results.append(result)
        share = f", solver {100 * result['solver_share']:.0f}%" if "solver_share" in result else ""
        status = result.get("error") or (
            f"{result['time_s']:.2f} s, {result['peak_bytes'] / 2**20:,.0f} MiB{share}")
        h, w = spec["size"]
        print(f"[{time.time() - t0:6.1f}s] {h}x{w} {spec['mode']:>16} {label(result):>16}: {status}", flush=True)
    return results


def run_meta(args: argparse.Namespace, device: str, title: str) -> dict[str, Any]:
    """What the run ran on, for the JSON report."""
    import torch

    import mmsoft

    return {
        "title": title,
        "args": {k: (v if k != "sizes" else [list(s) for s in v]) for k, v in vars(args).items() if k != "worker"},
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "ext": mmsoft.ops.info(verbose=False),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def case_key(result: dict[str, Any]) -> tuple:
    """What identifies a case across reports: row label, mode, size, what was timed and on which input."""
    return label(result), result["mode"], tuple(result["size"]), result.get("what"), result.get("input", "noise")


def merge_reports(paths: list[str], out_dir: Path) -> dict[str, Any]:
    """``--merge``: one report from several (results by :func:`case_key`, later files win; each file's ``meta``
    kept under ``runs``), written as ``benchmark_<what>_merged.json`` / ``.png`` with its tables printed."""
    reports = [json.loads(Path(path).read_text()) for path in paths]
    merged = {case_key(r): r for report in reports for r in report["results"]}
    results = list(merged.values())
    whats = {r.get("what", "detector") for r in results}
    if len(whats) != 1:
        raise SystemExit(f"--merge: the reports time different things ({sorted(whats)}); merge one kind at a time")
    what = whats.pop()
    sizes = sorted({tuple(r["size"]) for r in results}, key=lambda hw: hw[0] * hw[1])
    modes = [mode for mode in MODES if any(r["mode"] == mode for r in results)]
    title = reports[-1]["meta"]["title"]
    report = {"meta": {"title": title, "merged_from": [str(p) for p in paths]},
              "runs": [rep["meta"] for rep in reports], "results": results, "accuracy": None}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"benchmark_{what}_merged"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(results, modes, stem.with_suffix(".png"), title)
    for mode in modes:
        print(f"\n{mode}:\n\n" + markdown_table(results, sizes, mode))
    print(f"\nsaved {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every case, print the tables, save JSON and PNG (or, with ``--merge``, combine earlier reports)."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return {}
    if args.merge:
        return merge_reports(args.merge, Path(args.out))

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU is available here")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [] if args.skip_benchmark else run_cases(case_specs(args, device), args.timeout)
    real_solvers = [solver for solver in args.solvers if solver != NO_SOLVE]  # no-solve has no accuracy to report
    acc = accuracy(args.accuracy_images, real_solvers, device) if args.accuracy else None

    title = f"{args.what} latency on {device}, batch 1, float32"
    meta = run_meta(args, device, title)
    stem = out_dir / f"benchmark_{args.what}_{device}"
    report = {"meta": meta, "results": results, "accuracy": acc}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    if results:
        plot(results, args.mode, stem.with_suffix(".png"), title)
    print(f"\n{title} (load average {meta['load_average'][0]:.1f} on {meta['cpu_count']} CPUs at the end)")
    for mode in args.mode:
        if any(r["mode"] == mode for r in results):
            print(f"\n{mode}:\n")
            print(markdown_table(results, args.sizes, mode))
    if acc:
        print("\n" + accuracy_table(acc))
    print(f"\nsaved {stem.with_suffix('.json')}" + (f" and {stem.with_suffix('.png')}" if results else ""))
    return report


if __name__ == "__main__":
    main()
