"""Benchmark the SOFT attention core: time and peak memory of forward and forward+backward vs N.

Backends: ``reference`` (PyTorch, materialises the N x m kernel matrix), ``ext`` (fused kernels of mmsoft._ext) and,
for scale, ``sdpa``: softmax attention over the same N tokens (``torch.nn.functional.scaled_dot_product_attention``).
Shapes follow one SOFT attention call: ``B*H`` independent heads, N tokens, m landmarks, head dim d.

Every (backend, N, mode) case runs in a fresh subprocess, so one case's allocations cannot leak into another's.
Peak memory:
  * CPU: the process' peak resident set size over the timed runs minus its resident size just before them
    (Linux: the peak counter VmHWM is reset through /proc/self/clear_refs after inputs are built and one warm-up
    run has happened; where that is not allowed, the process' peak so far, which then includes the warm-up run).
    This counts every allocation (torch's CPU allocator, MKL scratch, the Newton GEMMs), not only tensors. Workers
    run with MALLOC_MMAP_THRESHOLD_=131072 so that glibc returns freed large blocks to the OS (its default
    threshold grows after frees, and memory kept from the warm-up run would hide part of the next run's peak).
    ``cold_peak_bytes`` is the same measure over the first run, one-time initialisation (thread pools, BLAS
    buffers) included.
  * CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated bytes before the run (caching allocator view).
Time: median wall time of ``--repeat`` runs after one warm-up run (one run only when a run takes more than 10 s).

Example (the stage-1 detection shape of the issue)::

    python tools/analysis/benchmark_attention.py --device cpu --n-list 4096,16384,65536 --m 1024 --d 32 --bh 2 \\
        --out work_dirs/benchmark_attention

writes ``<out>/benchmark_attention_<device>.json`` and ``.png`` and prints a markdown table.
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
from benchlib.process_memory import PeakMemory, reset_peak_rss, status_kib

IMPLS = ("reference", "ext", "sdpa")
MODES = ("fwd", "fwdbwd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--n-list", default="4096,16384,65536", help="comma-separated token counts N")
    parser.add_argument("--m", type=int, default=1024, help="landmarks")
    parser.add_argument("--d", type=int, default=32, help="head dim")
    parser.add_argument("--bh", type=int, default=2, help="batch * heads")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--num-iters", type=int, default=20, help="Newton-Schulz iterations (0: products only)")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {IMPLS}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (after one warm-up run)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per case")
    parser.add_argument("--out", default="work_dirs/benchmark_attention", help="output directory")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- worker side
def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M)
    return int(match.group(1)) * 1024 if match else 1 << 62


def memory_guard(spec: dict[str, Any]) -> str | None:
    """Why the case is skipped on the CPU (it could need more memory than is available, which would swap or wake the
    OOM killer), or None. The reference keeps ~4 N x m matrices alive in backward; softmax attention may build the
    N x N matrix (math fallback) unless SDPA has a fused CPU kernel."""
    import torch
    import torch.nn.functional as F

    if spec["device"] != "cpu" or spec["impl"] == "ext":
        return None
    n_by_m = spec["bh"] * spec["n"] * (spec["n"] if spec["impl"] == "sdpa" else spec["m"]) * 4
    need = n_by_m * (6 if spec["mode"] == "fwdbwd" else 3)
    if need <= 0.7 * _available_bytes() or (spec["impl"] == "sdpa" and _probe_sdpa_flash(torch, F)):
        return None
    return f"skipped: could need ~{need / 2**30:.0f} GiB, {_available_bytes() / 2**30:.0f} GiB available"


def make_inputs(spec: dict[str, Any]):
    """``q, k, v`` of the case (seed 0; q scaled by d^-1/4; SOFT landmarks: means of N/m consecutive queries, a
    well-conditioned landmark kernel as the layer makes them; SDPA: N keys) and the attention function to time."""
    import torch
    import torch.nn.functional as F

    from mmsoft.ops import soft_attention

    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    bh, n, m, d = spec["bh"], spec["n"], spec["m"], spec["d"]
    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(bh, n, d, generator=gen) * d ** -0.25).to(device, dtype)
    v = torch.randn(bh, n, d, generator=gen).to(device, dtype)
    if spec["impl"] == "sdpa":
        k = (torch.randn(bh, n, d, generator=gen) * d ** -0.25).to(device, dtype)

        def attention(q, k, v):
            # 4-D (1, B*H, N, d): the layout the fused (flash / memory-efficient) SDPA kernels accept; 3-D inputs
            # fall back to the math path, which materialises B*H x N x N.
            return F.scaled_dot_product_attention(q[None], k[None], v[None])[0]
    else:
        k = q.float().reshape(bh, m, n // m, d).mean(2) if n % m == 0 else torch.randn(bh, m, d, generator=gen)
        k = k.to(device, torch.float32)

        def attention(q, k, v):
            return soft_attention(q, k, v, num_iters=spec["num_iters"], impl=spec["impl"])
    return q, k, v, attention, gen


def make_step(spec: dict[str, Any]) -> tuple[Callable[[], None], tuple]:
    """One forward (or forward + backward, ``fwdbwd``) of the case, waited for on CUDA; and its ``q, k, v``."""
    import torch

    q, k, v, attention, gen = make_inputs(spec)
    backward = spec["mode"] == "fwdbwd"
    if backward:
        for t in (q, k, v):
            t.requires_grad_()
    grad_out = torch.randn(v.shape, generator=gen).to(v.device, v.dtype) if backward else None

    def step() -> None:
        for t in (q, k, v):
            t.grad = None
        with torch.set_grad_enabled(backward):
            out = attention(q, k, v)
            if backward:
                out.backward(grad_out)
        if q.device.type == "cuda":
            torch.cuda.synchronize()

    return step, (q, k, v)


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Time and measure one (impl, N, mode) case in this (fresh) process: a warm-up run (its peak memory is
    ``cold_peak_bytes`` on the CPU), then ``repeat`` timed runs (one when the warm-up took more than 10 s) with their
    peak memory."""
    import torch

    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    skipped = memory_guard(spec)
    if skipped:
        return {**spec, "error": skipped}
    step, (q, k, v) = make_step(spec)
    cuda = q.device.type == "cuda"
    with PeakMemory(cuda, q.device) as cold:
        t0 = time.perf_counter()
        step()  # warm-up: lazy initialisation, allocator growth
        warm = time.perf_counter() - t0
    repeat = 1 if warm > 10 else spec["repeat"]
    with PeakMemory(cuda, q.device) as mem:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return {**spec, "time_s": statistics.median(times), "times_s": times, "warmup_s": warm,
            "peak_bytes": mem.peak_bytes, "cold_peak_bytes": None if cuda else cold.peak_bytes,
            "memory_method": mem.method,
            "resolved_impl": spec["impl"] if spec["impl"] == "sdpa" else _resolved(spec["impl"], q, k, v)}


def _probe_sdpa_flash(torch, F) -> bool:
    """Whether SDPA on CPU runs a fused kernel (O(N) memory) for 4-D fp32 inputs: checked on a small problem."""
    q = torch.randn(1, 2, 4096, 32)
    before = status_kib("VmRSS")
    reset_peak_rss()
    F.scaled_dot_product_attention(q, q, q)
    return (status_kib("VmHWM") - before) * 1024 < 2 * 4096 * 4096 * 4  # far below one 4096 x 4096 matrix per head


def _resolved(impl: str, q, k, v) -> str:
    from mmsoft.ops import resolve_impl

    return resolve_impl(impl, q, k, v)


# ----------------------------------------------------------------------------------------------- driver side
def run_in_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one case in a fresh interpreter; errors and timeouts become entries with an ``error`` field."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    return run_case_subprocess(__file__, spec, timeout, env=env)


def fmt_ms(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    return result.get("error", "")[:40] if "error" in result else f"{result['time_s'] * 1e3:,.0f}"


def fmt_mib(result: dict[str, Any] | None) -> str:
    if result is None or "error" in result:
        return "-"
    return f"{result['peak_bytes'] / 2**20:,.0f}"


def markdown_table(results: list[dict[str, Any]], n_list: list[int], impls: list[str]) -> str:
    """N x backend table of fwd / fwd+bwd time (ms) and peak memory (MiB)."""
    index = {(r["impl"], r["n"], r["mode"]): r for r in results}
    rows = ["| N | backend | fwd time (ms) | fwd peak (MiB) | fwd+bwd time (ms) | fwd+bwd peak (MiB) |",
            "|---:|---|---:|---:|---:|---:|"]
    for n in n_list:
        for impl in impls:
            fwd, both = index.get((impl, n, "fwd")), index.get((impl, n, "fwdbwd"))
            rows.append(f"| {n:,} | {impl} | {fmt_ms(fwd)} | {fmt_mib(fwd)} | {fmt_ms(both)} | {fmt_mib(both)} |")
    return "\n".join(rows)


def ratios(results: list[dict[str, Any]], n: int) -> list[str]:
    """reference / ext ratios of time and peak memory at N = n."""
    index = {(r["impl"], r["n"], r["mode"]): r for r in results if "error" not in r}
    lines = []
    for mode in MODES:
        ref, ext = index.get(("reference", n, mode)), index.get(("ext", n, mode))
        if ref and ext and ext["time_s"] > 0 and ext["peak_bytes"] > 0:
            lines.append(f"N={n:,} {mode}: reference/ext time x{ref['time_s'] / ext['time_s']:.2f}, "
                         f"peak memory x{ref['peak_bytes'] / ext['peak_bytes']:.1f}")
    return lines


def plot(results: list[dict[str, Any]], impls: list[str], path: Path, title: str) -> None:
    """Log-log plot of time and peak memory vs N (one panel per mode and metric)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8))
    axes = fig.subplots(2, 2, squeeze=False)
    for col, mode in enumerate(MODES):
        for row, (key, scale, label) in enumerate((("time_s", 1e3, "time (ms)"),
                                                   ("peak_bytes", 2.0**-20, "peak memory (MiB)"))):
            ax = axes[row][col]
            for impl in impls:
                pts = sorted((r["n"], r[key] * scale) for r in results
                             if r["impl"] == impl and r["mode"] == mode and "error" not in r and r[key] > 0)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("N (tokens)")
            ax.set_ylabel(label)
            ax.set_title(f"{'forward' if mode == 'fwd' else 'forward + backward'}: {label.split(' (')[0]}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    """Run every case, print the table, save JSON and PNG."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return

    import torch

    import mmsoft

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU is available here")
    n_list = [int(x) for x in args.n_list.split(",") if x]
    impls = [x for x in args.impls.split(",") if x]
    modes = [x for x in args.modes.split(",") if x]
    for name, values, allowed in (("impl", impls, IMPLS), ("mode", modes, MODES)):
        bad = [x for x in values if x not in allowed]
        if bad:
            sys.exit(f"unknown {name}(s) {bad}; choose from {allowed}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    results = []
    for n in n_list:
        for impl in impls:
            for mode in modes:
                spec = {"device": args.device, "dtype": args.dtype, "bh": args.bh, "n": n, "m": args.m, "d": args.d,
                        "impl": impl, "mode": mode, "num_iters": args.num_iters, "repeat": args.repeat,
                        "threads": args.threads}
                t0 = time.time()
                result = run_in_subprocess(spec, args.timeout)
                results.append(result)
                status = result.get("error") or (f"{result['time_s'] * 1e3:,.1f} ms, "
                                                 f"{result['peak_bytes'] / 2**20:,.1f} MiB")
                print(f"[{time.time() - t0:6.1f}s] N={n:>7,} {impl:>9} {mode:>6}: {status}", flush=True)

    title = (f"SOFT attention core on {args.device}: B*H={args.bh}, m={args.m}, d={args.d}, {args.dtype}, "
             f"{args.num_iters} Newton iterations")
    meta = {
        "title": title,
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "ext": mmsoft.ops.info(verbose=False),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    stem = out_dir / f"benchmark_attention_{args.device}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    plot(results, impls, stem.with_suffix(".png"), title)
    print(f"\n{title}\n")
    print(markdown_table(results, n_list, impls))
    for n in n_list:
        for line in ratios(results, n):
            print(line)
    print(f"\nsaved {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")


if __name__ == "__main__":
    main()
