"""Workloads of the GPU check (``tools/gpu_check.sh``), run in worker processes by ``tools/analysis/gpu_check.py``.

Each case is a JSON spec whose ``kind`` is one of

* ``attention``: one (dtype, backend, mode) of the SOFT attention core at one shape, measured by
  ``benchmark_attention.run_case`` (``reference``: PyTorch, materialises the N x m matrix; ``ext``: the fused kernels
  of ``mmsoft._ext``; ``sdpa``: softmax attention over the same N tokens). Time: median of the timed runs after one
  warm-up, ``torch.cuda.synchronize`` after each; peak memory: ``torch.cuda.max_memory_allocated`` minus what was
  allocated before (on the CPU: peak RSS growth).
* ``agreement``: the extension and the PyTorch reference (same dtype) against the float64 reference, on the inputs
  of the timing shape or on small odd shapes: output and the gradients of q, k, v.
* ``newton_gemm``: ``mmsoft.ops.newton_pinv`` on the ``(B*H, m, m)`` landmark kernel against a plain batched GEMM of
  the same size in the same process, as achieved TFLOP/s (CUDA events).
* ``backbone``: one (model, landmark solver, precision, mode) of a whole backbone at one input size:
  SOFT-Tiny/Small-Norm (``mmsoft.models.SOFT``) per solver and timm's PVTv2-B1 / Swin-T (``features_only``), fp32
  or bf16 autocast, forward (eval, no grad) or forward + backward (train mode, loss = mean square of every output
  map).

Protocol: ``gpu_check_workloads.py --cases CASES.json --results RESULTS.jsonl`` runs the listed cases in order and
appends one JSON line per event to the results file, ``{"event": "start", "key": K}`` before a case and
``{"event": "done", "key": K, "result": {...}}`` after it (a failed case has an ``error`` field), so the driver keeps
every finished case when a worker hangs or dies, and restarts a worker on the cases left. After a failed case the
worker checks that the CUDA context still works and exits with code 3 when it does not.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from benchlib.process_memory import PeakMemory
from benchlib.profiler_ranges import solver_share

CUDA_BROKEN_EXIT = 3


class Unavailable(RuntimeError):
    """A case that cannot run in this environment (e.g. timm is not installed): recorded as skipped, not failed."""

#: SOFT backbones by model name (``mmsoft.models.SOFT(arch=...)``); the others are timm model names.
SOFT_ARCHS = {"soft-t": "tiny", "soft-s": "small"}
#: Extra ``timm.create_model`` arguments tried in order for a model that needs to know the input size.
TIMM_SIZE_KWARGS = {"swin_tiny_patch4_window7_224": ("img_size", "strict_img_size")}


# ----------------------------------------------------------------------------------------------- measuring
def time_calls(fn: Callable[[], Any], repeat: int, cuda: bool) -> list[float]:
    """Seconds taken by each of ``repeat`` calls of ``fn``: CUDA events around each call on CUDA (the call's GPU work,
    waited for), ``perf_counter`` on the CPU. Warm up before calling this."""
    import torch

    times = []
    for _ in range(repeat):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def adaptive_repeat(warmup_s: float, budget_s: float, max_repeat: int) -> int:
    """Timed runs for a case whose warm-up took ``warmup_s``: as many as fit in ``budget_s``, 1 to ``max_repeat``."""
    return max(1, min(max_repeat, int(budget_s / max(warmup_s, 1e-6))))


def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| in float64 (inf when ``got`` is not finite)."""
    got, ref = got.detach().double(), ref.detach().double()
    if not bool(got.isfinite().all()):
        return math.inf
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------------------------- attention core
def attention_inputs(bh: int, n: int, m: int, d: int, dtype, device):
    """q, v ``(B*H, N, d)`` in ``dtype`` and float32 landmarks ``k (B*H, m, d)`` as the timing cases build them
    (``benchmark_attention.run_case``: seed 0, q scaled by d^-1/4, landmarks = means of N/m consecutive queries)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(bh, n, d, generator=gen) * d ** -0.25).to(device, dtype)
    v = torch.randn(bh, n, d, generator=gen).to(device, dtype)
    if n % m == 0:
        k = q.float().reshape(bh, m, n // m, d).mean(2)
    else:
        k = torch.randn(bh, m, d, generator=gen).to(device) * 0.6
    return q, k.to(device, torch.float32), v


def run_attention(spec: dict[str, Any]) -> dict[str, Any]:
    """One (dtype, impl, mode) timing case, by ``benchmark_attention.run_case``."""
    import benchmark_attention

    keys = ("device", "dtype", "bh", "n", "m", "d", "impl", "mode", "num_iters", "repeat")
    return benchmark_attention.run_case({**{k: spec[k] for k in keys}, "threads": 0})


def agreement(bh: int, n: int, m: int, d: int, c: int, dtype_name: str, device: str, num_iters: int,
              seed: int = 0) -> dict[str, Any]:
    """Extension and PyTorch reference (both in ``dtype``) against the float64 reference: max relative error of the
    output and of dq, dk, dv. ``agree``: the extension is within ``2 x`` the reference's own error plus 8 units of
    the dtype's rounding, for every quantity (the fused kernels are no less accurate than materialising A)."""
    import torch

    from mmsoft.ops import soft_attention

    dtype = getattr(torch, dtype_name)
    if c == d:
        q, k, v = attention_inputs(bh, n, m, d, dtype, device)
    else:
        gen = torch.Generator().manual_seed(seed)
        q = (torch.randn(bh, n, d, generator=gen) * d ** -0.25).to(device, dtype)
        k = (torch.randn(bh, m, d, generator=gen) * 0.6).to(device)
        v = torch.randn(bh, n, c, generator=gen).to(device, dtype)
    # One upstream gradient for all three, rounded to v's dtype first so that they all see the same values.
    grad = torch.randn(v.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device, dtype)
    results = {}
    for name, impl, cast in (("ext", "ext", None), ("reference", "reference", None),
                             ("float64", "reference", torch.float64)):
        leaves = [(t if cast is None else t.to(cast)).detach().clone().requires_grad_() for t in (q, k, v)]
        out = soft_attention(*leaves, num_iters=num_iters, impl=impl)
        out.backward(grad.to(out.dtype))
        results[name] = [out.detach(), *(t.grad for t in leaves)]
        del out, leaves
    eps = torch.finfo(dtype).eps
    errors: dict[str, dict[str, float]] = {}
    agree = True
    for i, what in enumerate(("out", "dq", "dk", "dv")):
        ext_err = rel_err(results["ext"][i], results["float64"][i])
        ref_err = rel_err(results["reference"][i], results["float64"][i])
        errors[what] = {"ext_vs_float64": ext_err, "reference_vs_float64": ref_err,
                        "ext_vs_reference": rel_err(results["ext"][i], results["reference"][i])}
        agree = agree and ext_err <= 2 * ref_err + 8 * eps
    return {"shape": {"bh": bh, "n": n, "m": m, "d": d, "c": c}, "dtype": dtype_name, "errors": errors,
            "agree": agree, "tolerance": "ext_vs_float64 <= 2 * reference_vs_float64 + 8 * eps(dtype)"}


def run_agreement(spec: dict[str, Any]) -> dict[str, Any]:
    """``agreement`` for every shape x dtype listed in the spec; ``agree`` when all agree."""
    checks = [agreement(*shape, dtype, spec["device"], spec["num_iters"], seed=i)
              for i, shape in enumerate(spec["shapes"]) for dtype in spec["dtypes"]]
    return {"checks": checks, "agree": all(c["agree"] for c in checks)}


def run_newton_gemm(spec: dict[str, Any]) -> dict[str, Any]:
    """Achieved TFLOP/s of ``newton_pinv`` (num_iters steps ``V <- 2V - V (A V)``: two ``m x m`` GEMMs each, so
    ``4 num_iters m^3`` flop per matrix) against one batched ``m x m`` GEMM (``2 m^3`` flop per matrix), both fp32."""
    import torch

    from mmsoft.ops import newton_pinv
    from mmsoft.ops.reference import gaussian_kernel

    cuda = spec["device"] == "cuda"
    bh, m, iters = spec["bh"], spec["m"], spec["num_iters"]
    _, k, _ = attention_inputs(bh, spec["n"], m, spec["d"], torch.float32, spec["device"])
    kernel = gaussian_kernel(k, k)
    a, b = torch.randn(2, bh, m, m, device=spec["device"]).unbind(0)
    out = torch.empty_like(a)
    inner = spec["gemm_inner"]

    def gemms() -> None:
        for _ in range(inner):
            torch.bmm(a, b, out=out)

    with torch.no_grad():
        t0 = time.perf_counter()
        newton_pinv(kernel, iters)
        gemms()
        if cuda:
            torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        repeat = adaptive_repeat(warm, spec["budget_s"], spec["max_repeat"])
        newton_t = statistics.median(time_calls(lambda: newton_pinv(kernel, iters), repeat, cuda))
        gemm_t = statistics.median(time_calls(gemms, repeat, cuda)) / inner
    newton_flop, gemm_flop = 4 * iters * bh * m ** 3, 2 * bh * m ** 3
    result = {"bh": bh, "m": m, "num_iters": iters, "repeat": repeat, "newton_s": newton_t, "gemm_s": gemm_t,
              "newton_flop": newton_flop, "gemm_flop": gemm_flop,
              "newton_tflops": newton_flop / newton_t / 1e12, "gemm_tflops": gemm_flop / gemm_t / 1e12,
              "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if cuda:
        result["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    result["ratio"] = result["newton_tflops"] / result["gemm_tflops"]
    return result


# ----------------------------------------------------------------------------------------------- backbones
def build_backbone(model: str, solver: str, size: tuple[int, int]) -> tuple[Any, dict[str, Any]]:
    """The backbone ``model`` (randomly initialised, seed 0) and how it was built. SOFT names build
    ``mmsoft.models.SOFT``; anything else is a timm model name with ``features_only=True``."""
    import torch

    torch.manual_seed(0)
    if model in SOFT_ARCHS:
        from mmsoft.models import SOFT

        net = SOFT(arch=SOFT_ARCHS[model], landmark_solver=solver)
        net.init_weights()
        return net, {"builder": f"mmsoft.models.SOFT(arch={SOFT_ARCHS[model]!r}, landmark_solver={solver!r})"}
    try:
        import timm
    except ImportError as exc:
        raise Unavailable(f"timm is not installed ({exc}): pip install timm") from exc
    attempts: list[dict[str, Any]] = []
    for kwarg in TIMM_SIZE_KWARGS.get(model, (None,)):
        extra = {"img_size": tuple(size)} if kwarg == "img_size" else {"strict_img_size": False} if kwarg else {}
        try:
            net = timm.create_model(model, pretrained=False, features_only=True, **extra)
        except (TypeError, ValueError, AssertionError) as exc:  # an older timm without that argument
            attempts.append({"kwargs": str(extra), "error": f"{type(exc).__name__}: {exc}"})
            continue
        return net, {"builder": f"timm.create_model({model!r}, features_only=True, {extra})",
                     "timm": timm.__version__, "failed_attempts": attempts}
    raise RuntimeError(f"timm {timm.__version__} cannot build {model} for {size}: {attempts}")


class BackboneCache:
    """Every backbone built so far, by (model, solver, size, device): each is built once (a few seconds on the CPU for
    SOFT-Small) whatever order the cases come in. Their weights stay on the device (< 0.5 GB for all of them) and
    count in no case's peak memory, which is measured above what is allocated when the case starts."""

    def __init__(self) -> None:
        self.nets: dict[tuple, tuple[Any, dict[str, Any]]] = {}

    def get(self, spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        key = (spec["model"], spec["solver"], tuple(spec["size"]), spec["device"])
        if key not in self.nets:
            t0 = time.perf_counter()
            net, info = build_backbone(spec["model"], spec["solver"], tuple(spec["size"]))
            self.nets[key] = net.to(spec["device"]), {**info, "build_s": time.perf_counter() - t0}
        return self.nets[key]


def backbone_step(net, spec: dict[str, Any]) -> Callable[[], None]:
    """One run of the backbone case: forward (eval, no grad) or forward + backward (train mode, loss = mean square of
    every output map; backward outside autocast, as torch recommends), fp32 or bf16 autocast."""
    import torch

    device = torch.device(spec["device"])
    backward = spec["mode"] == "fwdbwd"
    net.train(backward)
    x = torch.randn(spec["batch"], 3, *spec["size"], generator=torch.Generator().manual_seed(0)).to(device)
    bf16 = spec["precision"] == "bf16"

    def step() -> None:
        if backward:
            net.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = sum(o.float().square().mean() for o in net(x))
            loss.backward()
        else:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                net(x)

    return step


def run_backbone(spec: dict[str, Any], cache: BackboneCache) -> dict[str, Any]:
    """Time one (model, solver, precision, mode) backbone case. SOFT cases with ``spec["measure_share"]`` also
    measure the landmark solver's share of the time in one extra, profiled run (:func:`solver_share`)."""
    net, info = cache.get(spec)
    cuda = spec["device"] == "cuda"
    step = backbone_step(net, spec)
    warm = time_calls(step, 1, cuda)[0]
    repeat = adaptive_repeat(warm, spec["budget_s"], spec["max_repeat"])
    with PeakMemory(cuda) as mem:
        times = time_calls(step, repeat, cuda)
    result = {"time_s": statistics.median(times), "best_s": min(times), "times_s": times, "warmup_s": warm,
              "peak_bytes": mem.peak_bytes, "memory_method": mem.method,
              "params_m": sum(p.numel() for p in net.parameters()) / 1e6, **info}
    if spec["model"] in SOFT_ARCHS and spec.get("measure_share"):
        result.update(solver_share(step, cuda))
    net.zero_grad(set_to_none=True)
    return result


# ----------------------------------------------------------------------------------------------- environment
def run_env(spec: dict[str, Any]) -> dict[str, Any]:
    """What the check runs on: Python, torch and its CUDA, the GPU, ``mmsoft.ops.info()`` (also printed) and the
    versions of the OpenMMLab / timm packages, including whether mmcv's compiled ops are importable."""
    import platform

    import torch

    import mmsoft

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                            "mmsoft": str(Path(mmsoft.__file__).parent)}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    gpu_memory_gib=props.total_memory / 2**30)
    # What fp32 means in the timings: torch's defaults, the same for SOFT and the timm models.
    info["tf32"] = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                    "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                    "float32_matmul_precision": torch.get_float32_matmul_precision()}
    info["ext"] = mmsoft.ops.info(verbose=True)
    for name in ("mmengine", "mmcv", "timm", "numpy", "setuptools"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:
            info[name] = f"not importable ({type(exc).__name__}: {exc})"
    try:
        import mmcv.ops  # noqa: F401
        info["mmcv_ops"] = "importable"
    except Exception as exc:
        info["mmcv_ops"] = f"not importable ({type(exc).__name__}: {str(exc)[:200]})"
    info["ext_cuda"] = "cuda" in info["ext"]["backends"]
    return info


# ----------------------------------------------------------------------------------------------- worker loop
def run_one(spec: dict[str, Any], cache: BackboneCache) -> dict[str, Any]:
    """Dispatch one case spec by its ``kind``."""
    kind = spec["kind"]
    if kind == "env":
        return run_env(spec)
    if kind == "attention":
        return run_attention(spec)
    if kind == "agreement":
        return run_agreement(spec)
    if kind == "newton_gemm":
        return run_newton_gemm(spec)
    if kind == "backbone":
        return run_backbone(spec, cache)
    raise ValueError(f"unknown case kind {kind!r}")


def cuda_still_works() -> bool:
    """False when the CUDA context is broken (a sticky error such as an illegal address): restart the process."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return True
    try:
        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1).item()
        torch.cuda.empty_cache()
        return True
    except RuntimeError:
        return False


def work(cases: list[dict[str, Any]], results: Path) -> int:
    """Run ``cases`` in order, appending start / done events to ``results``; the exit code of the worker."""
    cache = BackboneCache()
    with results.open("a") as log:
        def emit(event: dict[str, Any]) -> None:
            log.write(json.dumps(event) + "\n")
            log.flush()

        for spec in cases:
            emit({"event": "start", "key": spec["key"], "time": time.time()})
            t0 = time.perf_counter()
            try:
                result = run_one(spec, cache)
            except Unavailable as exc:
                result = {"skipped": str(exc)}
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                          "traceback": traceback.format_exc(limit=6)[-3000:]}
                print(f"[{spec['key']}] {result['error']}", file=sys.stderr, flush=True)
            result["case_wall_s"] = time.perf_counter() - t0
            emit({"event": "done", "key": spec["key"], "result": result})
            if "error" in result and not cuda_still_works():
                print("the CUDA context is broken: exiting so that the next case runs in a fresh process",
                      file=sys.stderr, flush=True)
                return CUDA_BROKEN_EXIT
            if spec["device"] == "cuda":
                import torch

                torch.cuda.empty_cache()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line of a worker process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", required=True, help="JSON file with the list of case specs")
    parser.add_argument("--results", required=True, help="JSON-lines file the events are appended to")
    args = parser.parse_args(argv)
    return work(json.loads(Path(args.cases).read_text()), Path(args.results))


if __name__ == "__main__":
    sys.exit(main())
