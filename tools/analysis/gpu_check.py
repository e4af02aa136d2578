"""GPU validation of mmsoft in one run (driver of ``tools/gpu_check.sh``): install, build, test, sanitize, time.

Phases, each with its own time limit inside one overall budget (``--budget``, 340 s on the device), recorded and
reported whatever happened to the others:

1. ``install`` (device): the wheels carried in ``.gpu_wheels/`` (mmengine, mmcv-lite = mmcv 2.1.0 without compiled
   ops, addict, termcolor, yapf, platformdirs) into ``--site`` with ``pip --no-index --no-deps``.
2. ``build`` (device): ``mmsoft._ext`` with its CUDA kernels for the GPU's architecture (``nvidia-smi``'s compute
   capability, else 9.0; ``TORCH_CUDA_ARCH_LIST`` overrides), ``setup.py build_ext --inplace``.
3. ``env``: torch, the GPU, ``mmsoft.ops.info()``, package versions.
4. ``checks``, three processes at once: the op test suite (``pytest tests/ops`` minus the CPU-side compile /
   emulation / benchmark-tool checks; on CUDA the tests parametrised over devices run on the GPU, and
   ``tests/ops/test_cuda_device.py`` adds the GPU-only cases), and a small forward + backward through the extension
   (every dtype, both tile configurations, odd sizes, compared with the float64 reference) under
   ``compute-sanitizer --tool memcheck`` and ``--tool racecheck`` (every kernel; reports are attributed to mmsoft's
   kernels or to others).
5. ``timings`` (``tools/analysis/gpu_check_workloads.py``): the attention core at the stage-1 detection shape
   (B*H = 2, N = 65,536, m = 1,024, d = 32; fp32 and bf16; forward and forward + backward; reference vs ext vs
   softmax SDPA, peak memory; ext vs reference vs float64 agreement), Newton-Schulz TFLOP/s against a plain batched
   GEMM of the same size, and the SOFT-Tiny/Small-Norm backbones (every landmark solver) against timm's PVTv2-B1 and
   Swin-T (features_only) at 800x1344, fp32 and bf16 autocast, forward and forward + backward, with peak memory.
   Cases run in one worker process that is restarted on the cases left when one hangs (per-case limit) or breaks
   the CUDA context.

Results go to ``--out`` (at most 7 files: ``gpu_check.json``, ``gpu_check.md``, ``gpu_check.log`` and the logs of
the build, the op tests, the sanitizer and the timing worker), with pass / fail against the issue's targets.
``--smoke`` runs the same code paths on the CPU at tiny sizes in seconds (no install, no build: the current
environment and the extension as built), so CI keeps the tool working; its numbers mean nothing.

The driver itself imports only the standard library, so it reports even when torch or mmsoft cannot be imported.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ROOT / "tools" / "analysis" / "gpu_check_workloads.py"
LOG_LIMIT = 4 * 2**20
PHASES = ("install", "build", "env", "checks", "timings")
#: Op test files not run on the device: CPU-side checks (nvcc compile check, the CPU emulation of the CUDA kernels,
#: the CPU benchmark tool) that CI runs here; on the device the real build and the GPU replace them.
OP_TESTS_IGNORED = ("tests/ops/test_cuda_compile.py", "tests/ops/test_cuda_emulation.py",
                    "tests/ops/test_benchmark_tool.py")
NOT_COVERED = [
    "mmcv's compiled ops (mmcv.ops: NMS, RoIAlign, deformable convolution, ...): mmcv 2.1.0 is installed without "
    "them (mmcv-lite), which is all the SOFT backbone imports (mmcv.cnn bricks); no detector or segmentor head, "
    "NMS, loss or box coder runs on the GPU here.",
    "mmdet and mmseg are not installed on the device: no config-built detector / segmentor, data pipeline, training "
    "or test loop (tools/train.py, tools/test.py, benchmark_backbone.py --what detector); CI covers them on the CPU.",
    "Test files outside tests/ops (configs, training, distributed, converters) and the CPU-side op checks "
    f"{', '.join(Path(p).name for p in OP_TESTS_IGNORED)} run in CI on the CPU, not here.",
    "One GPU only: no multi-GPU / NCCL / SyncBN run; torch.compile is covered with the aot_eager backend only.",
]

ATTENTION_IMPLS = ("ext", "reference", "sdpa")
MODES = ("fwd", "fwdbwd")
PRECISIONS = ("fp32", "bf16")
TIMM_MODELS = ("pvt_v2_b1", "swin_tiny_patch4_window7_224")
#: Landmark solvers that synchronise with the host on CUDA (cuSOLVER's eigh): expected slowest there, timed last.
SLOW_SOLVERS = ("newton_eigh",)


def plans() -> dict[str, dict[str, Any]]:
    """What each mode measures and its time limits (seconds). ``reserve``: the least time kept for each later phase."""
    device = {
        "device": "cuda",
        "budget_s": 340.0,
        "timeouts": {"install": 60, "build": 240, "env": 60, "checks": 120, "timings": 190},
        "reserve": {"env": 15, "checks": 45, "timings": 90},
        "case_timeout": 90,
        "attention": {"bh": 2, "n": 65536, "m": 1024, "d": 32, "num_iters": 20, "dtypes": ["float32", "bfloat16"],
                      "repeat": 5},
        "newton_gemm": {"budget_s": 2.0, "max_repeat": 10, "gemm_inner": 20},
        "sanitize": {"shapes": [[4, 1000, 40, 32, 24], [4, 1000, 70, 64, 80]],
                     "dtypes": ["float32", "float16", "bfloat16"], "num_iters": 20},
        "backbone": {"size": [800, 1344], "batch": 1, "soft_models": ["soft-t", "soft-s"],
                     "timm_models": list(TIMM_MODELS), "budget_s": 1.0, "max_repeat": 10,
                     "other_solver_runs": None},
        # The GPU-only file first, so that a timeout leaves its results; tests/ops includes it only once.
        "op_tests": ["tests/ops/test_cuda_device.py", "tests/ops"],
    }
    smoke = {
        **device,
        "device": "cpu",
        "budget_s": 120.0,
        "timeouts": {"install": 10, "build": 10, "env": 30, "checks": 40, "timings": 60},
        "reserve": {"env": 5, "checks": 10, "timings": 20},
        "case_timeout": 30,
        "attention": {**device["attention"], "n": 128, "m": 16, "repeat": 1},
        "newton_gemm": {"budget_s": 0.05, "max_repeat": 2, "gemm_inner": 2},
        "sanitize": {**device["sanitize"], "shapes": [[2, 100, 7, 32, 24], [2, 100, 9, 64, 80]]},
        "backbone": {**device["backbone"], "size": [32, 64], "soft_models": ["soft-t"], "budget_s": 0.0,
                     "max_repeat": 1, "other_solver_runs": [["fp32", "fwd"]]},
        "op_tests": ["tests/ops/test_cuda_device.py"],
    }
    return {"device": device, "smoke": smoke}


# ----------------------------------------------------------------------------------------------- case lists
def attention_cases(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Timing cases of the attention core, the agreement checks at the same shape and the Newton-vs-GEMM case,
    in the order they run (fp32 first: the targets are stated for it)."""
    a, dev = plan["attention"], plan["device"]
    shape = {k: a[k] for k in ("bh", "n", "m", "d", "num_iters")}
    cases = []
    for dtype in a["dtypes"]:
        cases.append({"kind": "agreement", "key": f"agreement/{dtype}", "device": dev, "dtypes": [dtype],
                      "num_iters": a["num_iters"], "shapes": [[a["bh"], a["n"], a["m"], a["d"], a["d"]]]})
        for impl in ATTENTION_IMPLS:
            for mode in MODES:
                cases.append({"kind": "attention", "key": f"attention/{dtype}/{impl}/{mode}", "device": dev,
                              "dtype": dtype, "impl": impl, "mode": mode, "repeat": a["repeat"], **shape})
        if dtype == a["dtypes"][0]:
            cases.append({"kind": "newton_gemm", "key": "newton_gemm", "device": dev, **shape, **plan["newton_gemm"]})
    return cases


def backbone_cases(plan: dict[str, Any], solvers: list[str]) -> list[dict[str, Any]]:
    """Backbone cases in order of importance, so that a time limit cuts the least useful ones: SOFT-Tiny with the
    default solver and the timm models (the speed target), SOFT-Small with the default solver, then the other solvers
    one precision / mode at a time (all of them in fp32 forward first), those that synchronise with the host on CUDA
    (:data:`SLOW_SOLVERS`) last. ``other_solver_runs`` in the plan limits the other solvers' precision / mode pairs.
    The landmark solver's share of the time is measured in the fp32 forward cases."""
    b, dev = plan["backbone"], plan["device"]
    every = [(prec, mode) for prec in PRECISIONS for mode in MODES]
    default, others = solvers[0], sorted(solvers[1:], key=lambda s: s in SLOW_SOLVERS)
    first, *rest_models = b["soft_models"]
    order = [(first, default, run) for run in every]
    order += [(m, "-", run) for m in b["timm_models"] for run in every]
    order += [(m, default, run) for m in rest_models for run in every]
    order += [(m, s, run) for run in map(tuple, b["other_solver_runs"] or every) for s in others
              for m in b["soft_models"]]
    common = {"kind": "backbone", "device": dev, "size": b["size"], "batch": b["batch"], "budget_s": b["budget_s"],
              "max_repeat": b["max_repeat"]}
    return [{**common, "key": f"backbone/{model}/{solver}/{prec}/{mode}", "model": model, "solver": solver,
             "precision": prec, "mode": mode, "measure_share": prec == "fp32" and mode == "fwd"}
            for model, solver, (prec, mode) in order]


def solvers_from_source() -> list[str]:
    """``mmsoft.ops.landmark_solvers.SOLVERS`` read from the source (the driver does not import torch)."""
    text = (ROOT / "mmsoft" / "ops" / "landmark_solvers.py").read_text()
    match = re.search(r"^SOLVERS\b[^=\n]*=\s*\{(.*?)^\}", text, re.M | re.S)
    if not match:
        raise RuntimeError("could not find the SOLVERS = {...} table in mmsoft/ops/landmark_solvers.py")
    return re.findall(r"^\s+['\"]([^'\"]+)['\"]\s*:", match.group(1), re.M)


# ----------------------------------------------------------------------------------------------- processes
def kill_group(proc: subprocess.Popen) -> None:
    """Stop a child started with ``start_new_session=True`` and everything it started (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a text file ('' when missing)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Check:
    """One run of the GPU check: phases, their results, the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = "smoke" if args.smoke else "device"
        self.plan = plans()[self.mode]
        self.start = time.time()
        self.deadline = self.start + (args.budget or self.plan["budget_s"])
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.console = (self.out / "gpu_check.log").open("w")
        self.python = args.python or sys.executable
        paths = [str(ROOT)] + ([args.site] if args.site and self.mode == "device" else [])
        old = os.environ.get("PYTHONPATH")
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([old] if old else [])),
                    "PYTHONUNBUFFERED": "1"}
        if self.mode == "smoke":
            # Tiny problems: one thread each, so that a busy CI machine does not leave OpenMP teams waiting on
            # descheduled threads.
            self.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.report: dict[str, Any] = {
            "meta": {"mode": self.mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": os.uname().nodename,
                     "python": self.python, "budget_s": self.deadline - self.start, "plan": self.plan,
                     "pythonpath": self.env["PYTHONPATH"]},
            "phases": {}, "not_covered": NOT_COVERED}

    # -- bookkeeping
    def say(self, msg: str) -> None:
        line = f"[gpu_check {time.time() - self.start:6.1f}s] {msg}"
        print(line, flush=True)
        self.console.write(line + "\n")
        self.console.flush()

    def time_left(self) -> float:
        return self.deadline - time.time()

    def phase_timeout(self, phase: str) -> float:
        """The phase's own limit, cut so that every later phase keeps its reserve of the overall budget."""
        later = PHASES[PHASES.index(phase) + 1:]
        reserve = sum(self.plan["reserve"].get(p, 0) for p in later if p not in self.args.skip)
        return min(self.plan["timeouts"][phase], self.time_left() - reserve - 3)

    def record(self, phase: str, status: str, seconds: float, **detail: Any) -> None:
        self.report["phases"][phase] = {"status": status, "seconds": round(seconds, 1), **detail}
        summary = detail.get("summary", "")
        self.say(f"phase {phase}: {status.upper()} ({seconds:.1f} s){' - ' + summary if summary else ''}")

    def run_logged(self, cmd: list[str], timeout: float, log: Path,
                   env: dict[str, str] | None = None) -> tuple[int | None, float]:
        """Run ``cmd`` with its output in ``log``; (exit code or None on timeout, seconds)."""
        t0 = time.time()
        with log.open("w") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env or self.env,
                                    start_new_session=True)
            try:
                rc: int | None = proc.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                kill_group(proc)
                f.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
                rc = None
        return rc, time.time() - t0

    # -- phases
    def phase_install(self) -> None:
        if self.mode == "smoke":
            return self.record("install", "skipped", 0, summary="smoke: uses the current environment")
        wheels = sorted(Path(self.args.wheels).glob("*.whl"))
        if not wheels:
            return self.record("install", "skipped", 0, summary=f"no wheels in {self.args.wheels}: run "
                               "`bash tools/gpu_check.sh --prepare` on a machine with network and carry .gpu_wheels")
        log = self.work / "install.log"
        cmd = [self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
               "--target", self.args.site, *map(str, wheels)]
        rc, secs = self.run_logged(cmd, self.phase_timeout("install"), log)
        how = "pip"
        if rc != 0:
            # No usable pip there: a pure-Python wheel is a zip of the files to put on the path, so unpack it.
            how = f"unzipped (pip: exit {rc})"
            for whl in wheels:
                with zipfile.ZipFile(whl) as z:
                    z.extractall(self.args.site)
        self.record("install", "ok", secs, wheels=[w.name for w in wheels], site=self.args.site, how=how,
                    summary=f"{len(wheels)} wheels into {self.args.site} ({how})")
        self.console.write(log.read_text(errors="replace"))

    def cuda_arch(self) -> str:
        """TORCH_CUDA_ARCH_LIST when set, else the GPU's compute capability from nvidia-smi, else 9.0."""
        if os.environ.get("TORCH_CUDA_ARCH_LIST"):
            return os.environ["TORCH_CUDA_ARCH_LIST"]
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.split()
            if out and re.fullmatch(r"\d+\.\d+", out[0]):
                return out[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
        return "9.0"

    def phase_build(self) -> None:
        if self.mode == "smoke":
            return self.record("build", "skipped", 0, summary="smoke: uses mmsoft/_ext as already built")
        arch = self.cuda_arch()
        env = {**self.env, "TORCH_CUDA_ARCH_LIST": arch, "FORCE_CUDA": "1", "MAX_JOBS": str(os.cpu_count() or 4)}
        log = self.out / "build.log"
        rc, secs = self.run_logged([self.python, "setup.py", "build_ext", "--inplace"], self.phase_timeout("build"),
                                   log, env=env)
        status = "ok" if rc == 0 else "timeout" if rc is None else "failed"
        self.record("build", status, secs, arch=arch, summary=f"TORCH_CUDA_ARCH_LIST={arch}, see build.log",
                    log_tail=tail(log) if rc else "")

    def phase_env(self) -> None:
        t0 = time.time()
        spec = {"kind": "env", "key": "env", "device": "cpu"}
        results = self.run_cases([spec], self.phase_timeout("env"), self.work / "env.log")
        result = results["env"]
        self.console.write(tail(self.work / "env.log", 40) + "\n")
        self.report["env"] = result
        self.report["env"]["tools"] = self.tool_versions()
        if "error" in result:
            return self.record("env", "failed", time.time() - t0, summary=result["error"][:300])
        ok = result["ext_cuda"] and result["cuda_available"] if self.mode == "device" else result["ext"]["built"]
        gpu = result.get("gpu", "no GPU")
        self.record("env", "ok" if ok else "failed", time.time() - t0,
                    summary=f"torch {result['torch']}, {gpu}, mmsoft._ext backends {result['ext']['backends']}")

    @staticmethod
    def tool_versions() -> dict[str, str | None]:
        """The last line of ``nvcc --version`` / ``compute-sanitizer --version`` and the GPU as nvidia-smi sees it."""
        found = {}
        for name, flag in (("nvcc", "--version"), ("compute-sanitizer", "--version"), ("nvidia-smi", None)):
            path = find_sanitizer() if name == "compute-sanitizer" else shutil.which(name)
            if path is None:
                found[name] = None
                continue
            cmd = [path, flag] if flag else [path, "--query-gpu=name,driver_version,memory.total",
                                             "--format=csv,noheader"]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
                found[name] = out[-1] if out else path
            except (OSError, subprocess.TimeoutExpired) as exc:
                found[name] = f"{path} ({exc})"
        return found

    def phase_checks(self) -> None:
        """Op tests and the sanitizer runs at once (correctness only: they may share the GPU)."""
        t0 = time.time()
        timeout = self.phase_timeout("checks")
        junit = self.work / "junit.xml"
        test_cmd = [self.python, "-m", "pytest", *self.plan["op_tests"], "-v", "-rfE", f"--junitxml={junit}",
                    *(f"--ignore={p}" for p in OP_TESTS_IGNORED)]
        jobs = {"op_tests": (test_cmd, self.out / "pytest_ops.log", self.env)}
        cases_file = self.work / "sanitize_cases.json"
        cases_file.write_text(json.dumps([{"kind": "agreement", "key": "sanitize", "device": self.plan["device"],
                                           **self.plan["sanitize"]}]))
        sanitizer = find_sanitizer()
        tools = ("memcheck", "racecheck") if self.mode == "device" and sanitizer else ("none",)
        for tool in tools:
            cmd = [self.python, str(WORKLOADS), "--cases", str(cases_file), "--results",
                   str(self.work / f"sanitize_{tool}.jsonl")]
            if tool != "none":
                # Every kernel is checked (no --kernel-name filter, which would pass vacuously if it matched
                # nothing); reports are attributed to mmsoft's kernels or to others. API errors are not reported:
                # torch probes the runtime with calls that fail by design, and a failing call of mmsoft's raises.
                cmd = [sanitizer, "--tool", tool, "--error-exitcode", "86", "--print-limit", "50",
                       "--report-api-errors", "no", *(["--leak-check", "no"] if tool == "memcheck" else []), *cmd]
            # Without torch's caching allocator every tensor is its own allocation, so memcheck sees out-of-bounds
            # accesses that would otherwise land inside a larger cached block.
            jobs[f"sanitizer_{tool}"] = (cmd, self.work / f"sanitizer_{tool}.log",
                                         {**self.env, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        ended = self.run_parallel(jobs, timeout)
        self.report["op_tests"] = self.op_test_summary(junit, ended["op_tests"], self.out / "pytest_ops.log")
        self.report["sanitizer"] = {tool: self.sanitizer_summary(tool, ended[f"sanitizer_{tool}"]) for tool in tools}
        if tools == ("none",) and self.mode == "device":
            self.report["sanitizer"]["compute-sanitizer"] = {"status": "skipped", "summary": "not found on PATH or "
                                                             "under /usr/local/cuda*/bin: workload run without it"}
        self.write_sanitizer_log(tools)
        statuses = [self.report["op_tests"]["status"]] + [s["status"] for s in self.report["sanitizer"].values()]
        status = "ok" if all(s in ("ok", "skipped") for s in statuses) else "failed"
        parts = [f"op tests {self.report['op_tests']['summary']}"]
        parts += [f"{tool}: {s['summary']}" for tool, s in self.report["sanitizer"].items()]
        self.record("checks", status, time.time() - t0, summary="; ".join(parts))

    @staticmethod
    def run_parallel(jobs: dict[str, tuple[list[str], Path, dict[str, str]]],
                     timeout: float) -> dict[str, tuple[int | None, float]]:
        """Start every job at once, output to its log; (exit code or None when killed at ``timeout``, seconds)."""
        t0 = time.time()
        procs = {}
        for name, (cmd, log, env) in jobs.items():
            f = log.open("w")
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            procs[name] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                            start_new_session=True), f)
        ended: dict[str, tuple[int | None, float]] = {}
        while len(ended) < len(procs):
            for name, (proc, f) in procs.items():
                if name in ended:
                    continue
                if proc.poll() is None and time.time() - t0 > timeout:
                    kill_group(proc)
                    f.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
                    ended[name] = (None, time.time() - t0)
                elif proc.poll() is not None:
                    ended[name] = (proc.returncode, time.time() - t0)
                if name in ended:
                    f.close()
            time.sleep(0.2)
        return ended

    def op_test_summary(self, junit: Path, ended: tuple[int | None, float], log: Path) -> dict[str, Any]:
        """Counts of all tests and of those that ran on the GPU (a ``cuda`` parameter or the GPU-only file), failures
        with their first message line; from pytest's JUnit XML, or from its verbose log when it was killed."""
        rc, secs = ended
        outcomes = parse_pytest(junit, log.read_text(errors="replace") if log.exists() else "")
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        gpu = dict(counts)
        failures, skip_reasons = [], {}
        for name, (outcome, message) in outcomes.items():
            counts[outcome] += 1
            if "cuda" in name.split("::")[-1].lower() or "test_cuda_device" in name:
                gpu[outcome] += 1
            if outcome == "failed":
                failures.append(f"{name}: {message}")
            elif outcome == "skipped":
                skip_reasons[message] = skip_reasons.get(message, 0) + 1
        if rc is None:
            status = "timeout"
        else:
            status = "ok" if rc == 0 and counts["failed"] == 0 and outcomes else "failed"
        summary = (f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
                   f"(GPU cases: {gpu['passed']} passed, {gpu['failed']} failed, {gpu['skipped']} skipped)"
                   + (", killed at the time limit" if rc is None else f", exit {rc}" if rc else ""))
        result = {"status": status, "summary": summary, "seconds": secs, "exit_code": rc, "counts": counts,
                  "gpu_counts": gpu, "failures": failures[:50], "skip_reasons": skip_reasons,
                  "ignored_files": list(OP_TESTS_IGNORED), "paths": self.plan["op_tests"]}
        if status != "ok":
            result["log_tail"] = tail(log, 30)
        return result

    def sanitizer_summary(self, tool: str, ended: tuple[int | None, float]) -> dict[str, Any]:
        """The sanitizer's error / hazard counts (with how many name an mmsoft kernel) and the workload's own
        comparison with the float64 reference."""
        rc, secs = ended
        log = self.work / f"sanitizer_{tool}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        workload = self.read_results(self.work / f"sanitize_{tool}.jsonl").get("sanitize")
        info: dict[str, Any] = {"exit_code": rc, "seconds": secs, "workload": workload, **parse_sanitizer(text)}
        agree = bool(workload and workload.get("agree"))
        values = "values agree with float64" if agree else "values DISAGREE / missing"
        if rc is None:
            info.update(status="timeout", summary=f"killed at the time limit, {values}")
        elif tool == "none":
            info.update(status="ok" if rc == 0 and agree else "failed",
                        summary=f"workload without a sanitizer, {values}")
        else:
            n_err = info.get("errors")
            clean = rc == 0 and n_err == 0
            info.update(status="ok" if clean and agree else "failed",
                        summary=f"{'?' if n_err is None else n_err} errors"
                        + (f", {info['warnings']} warnings" if "warnings" in info else "")
                        + f" ({info['reports_naming_mmsoft']} reports name an mmsoft kernel), exit {rc}, {values}")
        if info["status"] != "ok":
            info["log_tail"] = tail(log, 40)
        return info

    def write_sanitizer_log(self, tools: tuple[str, ...]) -> None:
        with (self.out / "sanitizer.log").open("w") as f:
            for tool in tools:
                log = self.work / f"sanitizer_{tool}.log"
                f.write(f"===== {tool} =====\n")
                f.write(log.read_text(errors="replace")[-LOG_LIMIT // 2:] if log.exists() else "(not run)\n")

    # -- timing cases in restartable workers
    @staticmethod
    def read_results(path: Path) -> dict[str, Any]:
        results = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    event = json.loads(line)
                    if event["event"] == "done":
                        results[event["key"]] = event["result"]
        return results

    def run_cases(self, cases: list[dict[str, Any]], timeout: float, log: Path) -> dict[str, dict[str, Any]]:
        """Run ``cases`` in worker processes (restarted on the cases left when one hangs past the per-case limit or
        dies); every case gets a result, an ``error`` field for those that failed or never ran."""
        deadline = time.time() + timeout
        results: dict[str, dict[str, Any]] = {}
        remaining = list(cases)
        attempt = 0
        while remaining and deadline - time.time() > 2:
            attempt += 1
            cases_file, results_file = self.work / f"cases_{attempt}.json", self.work / f"results_{attempt}.jsonl"
            cases_file.write_text(json.dumps(remaining))
            with log.open("a") as f:
                f.write(f"\n$ worker attempt {attempt}: {len(remaining)} cases\n")
                f.flush()
                proc = subprocess.Popen([self.python, str(WORKLOADS), "--cases", str(cases_file), "--results",
                                         str(results_file)], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                        env=self.env, start_new_session=True)
                inflight, since, offset, reason = None, time.time(), 0, None
                while True:
                    done = proc.poll() is not None
                    if results_file.exists():
                        with results_file.open() as r:
                            r.seek(offset)
                            chunk = r.read()
                        complete = chunk[:chunk.rfind("\n") + 1]
                        offset += len(complete)
                        for line in complete.splitlines():
                            event = json.loads(line)
                            if event["event"] == "start":
                                inflight, since = event["key"], time.time()
                            else:
                                results[event["key"]] = event["result"]
                                inflight = None
                                self.say(f"  {event['key']}: {brief(event['result'])}")
                    if done:
                        break
                    if time.time() > deadline:
                        reason = "phase time budget used up"
                    elif inflight and time.time() - since > self.plan["case_timeout"]:
                        reason = f"timeout after {self.plan['case_timeout']} s"
                    if reason:
                        kill_group(proc)
                        f.write(f"\n[gpu_check] killed: {reason} (case {inflight})\n")
                        break
                    time.sleep(0.2)
            if inflight is not None:
                why = reason or f"worker died (exit {proc.returncode}): {tail(log, 3)}"
                results[inflight] = {"error": why}
                self.say(f"  {inflight}: {why}")
            elif proc.returncode not in (0, None) and reason is None and not any(
                    c["key"] in results for c in remaining):
                for c in remaining:  # died before its first case: do not retry forever
                    results[c["key"]] = {"error": f"worker exit {proc.returncode}: {tail(log, 3)}"}
            remaining = [c for c in remaining if c["key"] not in results]
            if reason == "phase time budget used up":
                break
        for c in remaining:
            results[c["key"]] = {"error": "not run: the phase's time budget was used up"}
        return results

    def phase_timings(self) -> None:
        t0 = time.time()
        cases = attention_cases(self.plan) + backbone_cases(self.plan, solvers_from_source())
        results = self.run_cases(cases, self.phase_timeout("timings"), self.out / "timings.log")
        self.report["attention"] = {"shape": self.plan["attention"], "cases": [
            {**c, **results[c["key"]]} for c in cases if c["kind"] in ("attention", "agreement", "newton_gemm")]}
        self.report["backbone"] = {"size": self.plan["backbone"]["size"], "batch": self.plan["backbone"]["batch"],
                                   "cases": [{**c, **results[c["key"]]} for c in cases if c["kind"] == "backbone"]}
        failed = [k for k, r in results.items() if "error" in r]
        disagree = [c["key"] for c in self.report["attention"]["cases"]
                    if c["kind"] == "agreement" and "error" not in c and not c["agree"]]
        skipped = [k for k, r in results.items() if "skipped" in r]
        status = "ok" if not failed and not disagree else "failed"
        self.record("timings", status, time.time() - t0, failed_cases=failed, disagreeing=disagree,
                    summary=f"{len(cases) - len(failed) - len(skipped)} cases measured, {len(skipped)} skipped, "
                    f"{len(failed)} failed" + (f"; ext/reference DISAGREE: {disagree}" if disagree else ""))

    # -- report
    def targets(self) -> list[dict[str, Any]]:
        return evaluate_targets(self.report.get("attention", {}).get("cases", []),
                                self.report.get("backbone", {}).get("cases", []))

    def finish(self) -> int:
        self.report["targets"] = self.targets()
        self.report["meta"]["wall_s"] = round(time.time() - self.start, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=2, default=str))
        md = markdown(self.report)
        (self.out / "gpu_check.md").write_text(md)
        self.say("report:\n" + md)
        self.say(f"wrote {self.out}/gpu_check.json and gpu_check.md")
        self.console.close()
        for name in ("timings.log", "pytest_ops.log", "build.log", "gpu_check.log"):
            cap_file(self.out / name)
        shutil.rmtree(self.work, ignore_errors=True)
        bad = [p for p, r in self.report["phases"].items() if r["status"] not in ("ok", "skipped")]
        return 1 if bad else 0

    def run(self) -> int:
        self.say(f"mode {self.mode}, budget {self.time_left():.0f} s, out {self.out}, python {self.python}")
        for phase in PHASES:
            if phase in self.args.skip:
                self.record(phase, "skipped", 0, summary="--skip")
                continue
            if self.phase_timeout(phase) < 5:
                self.record(phase, "skipped", 0, summary="no time left in the overall budget")
                continue
            try:
                getattr(self, f"phase_{phase}")()
            except Exception as exc:  # a bug here must not cost the other phases
                self.record(phase, "failed", 0, summary=f"driver error {type(exc).__name__}: {exc}",
                            traceback=traceback.format_exc(limit=8))
        return self.finish()


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH or in a CUDA toolkit under /usr/local (bin/ or its own folder)."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for pattern in ("cuda*/bin/compute-sanitizer", "cuda*/compute-sanitizer/compute-sanitizer"):
        hits = sorted(Path("/usr/local").glob(pattern))
        if hits:
            return str(hits[-1])
    return None


def parse_pytest(junit: Path, log_text: str) -> dict[str, tuple[str, str]]:
    """Test id -> (``passed`` | ``failed`` | ``skipped``, message) from pytest's JUnit XML, or, when pytest was killed
    before writing it, from the ``-v`` lines of its log (``path::test[param] PASSED``)."""
    outcomes: dict[str, tuple[str, str]] = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome, message = "failed", (child.get("message") or child.tag).splitlines()[0][:300]
                elif child.tag == "skipped":
                    outcome, message = "skipped", (child.get("message") or "")[:120]
            outcomes[name] = (outcome, message)
        return outcomes
    for match in re.finditer(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", log_text, re.M):
        word = match.group(2)
        outcomes[match.group(1)] = ("failed" if word in ("FAILED", "ERROR") else
                                    "skipped" if word in ("SKIPPED", "XFAIL") else "passed", "")
    return outcomes


def parse_sanitizer(text: str) -> dict[str, int]:
    """Counts from compute-sanitizer's output: ``errors`` (memcheck's ERROR SUMMARY, racecheck's errors),
    ``hazards`` / ``warnings`` (racecheck), and ``reports_naming_mmsoft``: report blocks that name an mmsoft kernel."""
    info: dict[str, int] = {}
    errors = re.findall(r"ERROR SUMMARY: (\d+) errors?", text)
    hazards = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
    if errors:
        info["errors"] = int(errors[-1])
    if hazards:
        info["hazards"], info["errors"], info["warnings"] = map(int, hazards[-1])
    # A report block starts with "========= Invalid ..." (memcheck) or "========= Error: Race ..." / "Warning: ..."
    # (racecheck) and names the kernel it happened in.
    blocks = re.split(r"\n(?==========\s+(?:Invalid|Error|Warning|Program hit|Race))", "\n" + text)
    info["reports_naming_mmsoft"] = sum("mmsoft" in b.split("SUMMARY")[0] for b in blocks[1:])
    return info


def cap_file(path: Path) -> None:
    """Keep a log under LOG_LIMIT bytes (its head and tail) so that it comes back from the device."""
    if path.exists() and path.stat().st_size > LOG_LIMIT:
        data = path.read_bytes()
        path.write_bytes(data[:LOG_LIMIT // 4] + b"\n[... cut ...]\n" + data[-LOG_LIMIT // 2:])


def brief(result: dict[str, Any]) -> str:
    """One line for the console about a finished case."""
    if "error" in result:
        return "ERROR " + result["error"].splitlines()[0][:200]
    if "skipped" in result:
        return "skipped: " + result["skipped"][:200]
    if "time_s" in result:
        return f"{result['time_s'] * 1e3:,.2f} ms, peak {result['peak_bytes'] / 2**20:,.1f} MiB"
    if "ratio" in result:
        return (f"Newton {result['newton_tflops']:.2f} TFLOP/s, GEMM {result['gemm_tflops']:.2f} TFLOP/s "
                f"({100 * result['ratio']:.0f}%)")
    if "agree" in result:
        return "agree" if result["agree"] else "DISAGREE"
    return "ok"


# ----------------------------------------------------------------------------------------------- targets
def _index(cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Measured cases by key (failed and skipped ones left out)."""
    return {c["key"]: c for c in cases if "error" not in c and "skipped" not in c}


def evaluate_targets(attention: list[dict[str, Any]], backbone: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pass / fail against the issue's targets; ``passed`` is None when something needed was not measured."""
    att, bb = _index(attention), _index(backbone)
    rows = []

    def row(name: str, required: str, measured: str | None, passed: bool | None) -> None:
        rows.append({"target": name, "required": required, "measured": measured or "not measured",
                     "passed": passed})

    dtypes = list(dict.fromkeys(c["dtype"] for c in attention if c["kind"] == "attention"))
    for dtype in dtypes:
        ref, ext = att.get(f"attention/{dtype}/reference/fwdbwd"), att.get(f"attention/{dtype}/ext/fwdbwd")
        speed = ref["time_s"] / ext["time_s"] if ref and ext and ext["time_s"] > 0 else None
        row(f"attention {dtype} fwd+bwd: ext speed-up over reference", ">= 5x",
            None if speed is None else f"{speed:.2f}x ({ref['time_s'] * 1e3:.2f} ms / {ext['time_s'] * 1e3:.2f} ms)",
            None if speed is None else speed >= 5)
        for mode, label in (("fwdbwd", "fwd+bwd"), ("fwd", "fwd")):
            ref, ext = att.get(f"attention/{dtype}/reference/{mode}"), att.get(f"attention/{dtype}/ext/{mode}")
            mem = ref["peak_bytes"] / max(ext["peak_bytes"], 1) if ref and ext else None
            row(f"attention {dtype} {label}: peak memory, reference / ext", ">= 10x",
                None if mem is None else
                f"{mem:.1f}x ({ref['peak_bytes'] / 2**20:,.1f} MiB / {ext['peak_bytes'] / 2**20:,.1f} MiB)",
                None if mem is None else mem >= 10)
    ng = att.get("newton_gemm")
    row("Newton-Schulz TFLOP/s vs the same-size fp32 batched GEMM", ">= 50%",
        f"{100 * ng['ratio']:.0f}% ({ng['newton_tflops']:.2f} vs {ng['gemm_tflops']:.2f} TFLOP/s)" if ng else None,
        None if ng is None else ng["ratio"] >= 0.5)
    for prec in PRECISIONS:
        soft = next((c for c in bb.values() if c["model"] == "soft-t" and c["precision"] == prec
                     and c["mode"] == "fwd" and c["solver"] == "newton"), None)
        pvt = bb.get(f"backbone/pvt_v2_b1/-/{prec}/fwd")
        ok = soft["time_s"] <= pvt["time_s"] if soft and pvt else None
        row(f"SOFT-Tiny-Norm backbone forward ({prec}, solver newton) vs PVTv2-B1", "no slower",
            f"{soft['time_s'] * 1e3:.1f} ms vs {pvt['time_s'] * 1e3:.1f} ms" if soft and pvt else None, ok)
    return rows


# ----------------------------------------------------------------------------------------------- markdown
def _ms(case: dict[str, Any] | None) -> str:
    if case is None:
        return "-"
    if "error" in case or "skipped" in case:
        return "error" if "error" in case else "skipped"
    return f"{case['time_s'] * 1e3:,.2f}"


def _mib(case: dict[str, Any] | None) -> str:
    if case is None or "error" in case or "skipped" in case:
        return "-"
    return f"{case['peak_bytes'] / 2**20:,.1f}"


def _err(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.1e}"


def markdown(report: dict[str, Any]) -> str:
    """The short human-readable report: phases, targets, attention, Newton vs GEMM, backbones, tests, sanitizer."""
    meta, env = report["meta"], report.get("env", {})
    smoke = ": tiny sizes on the CPU, numbers mean nothing" if meta["mode"] == "smoke" else ""
    lines = [f"# mmsoft GPU check ({meta['mode']}{smoke})",
             "", f"{meta['date']}, {env.get('gpu', 'no GPU')}, torch {env.get('torch', '?')} (CUDA "
             f"{env.get('torch_cuda')}), mmsoft._ext {env.get('ext', {}).get('backends', '?')} "
             f"archs {env.get('ext', {}).get('cuda_archs', '?')}, {meta.get('wall_s', '?')} s in all.", "",
             "| phase | status | seconds | summary |", "|---|---|---:|---|"]
    for name, p in report["phases"].items():
        lines.append(f"| {name} | {p['status']} | {p['seconds']} | {str(p.get('summary', '')).replace('|', '/')} |")
    lines += ["", "## Targets", "", "| target | required | measured | result |", "|---|---|---|---|"]
    for t in report.get("targets", []):
        result = "not measured" if t["passed"] is None else "PASS" if t["passed"] else "FAIL"
        lines.append(f"| {t['target']} | {t['required']} | {t['measured']} | {result} |")
    att = report.get("attention")
    if att:
        s = att["shape"]
        cases = {c["key"]: c for c in att["cases"]}
        lines += ["", f"## Attention core: B*H={s['bh']}, N={s['n']:,}, m={s['m']:,}, d={s['d']}, "
                  f"{s['num_iters']} Newton iterations", "",
                  "Time in ms (median), peak memory in MiB above the inputs.", "",
                  "| dtype | backend | fwd ms | fwd MiB | fwd+bwd ms | fwd+bwd MiB |", "|---|---|---:|---:|---:|---:|"]
        for dtype in s["dtypes"]:
            for impl in ATTENTION_IMPLS:
                fwd, both = cases.get(f"attention/{dtype}/{impl}/fwd"), cases.get(f"attention/{dtype}/{impl}/fwdbwd")
                lines.append(f"| {dtype} | {impl} | {_ms(fwd)} | {_mib(fwd)} | {_ms(both)} | {_mib(both)} |")
        lines += ["", "Max relative error against the float64 reference (ext / reference in the same dtype):", "",
                  "| dtype | out | dq | dk | dv | agree |", "|---|---|---|---|---|---|"]
        for dtype in s["dtypes"]:
            c = cases.get(f"agreement/{dtype}")
            if c is None or "error" in c:
                lines.append(f"| {dtype} | {c.get('error', '-')[:60] if c else '-'} | | | | |")
                continue
            errs = c["checks"][0]["errors"]
            cells = [f"{_err(errs[w]['ext_vs_float64'])} / {_err(errs[w]['reference_vs_float64'])}"
                     for w in ("out", "dq", "dk", "dv")]
            lines.append(f"| {dtype} | " + " | ".join(cells) + f" | {'yes' if c['agree'] else 'NO'} |")
        ng = cases.get("newton_gemm")
        if ng and "error" not in ng:
            lines += ["", f"Newton-Schulz ({ng['num_iters']} steps, {ng['bh']} x {ng['m']}x{ng['m']} fp32, "
                      f"matmul precision {ng['float32_matmul_precision']}): {ng['newton_s'] * 1e3:.2f} ms = "
                      f"{ng['newton_tflops']:.2f} TFLOP/s; one batched GEMM of the same size "
                      f"{ng['gemm_s'] * 1e3:.3f} ms = {ng['gemm_tflops']:.2f} TFLOP/s ({100 * ng['ratio']:.0f}%)."]
    bb = report.get("backbone")
    if bb:
        h, w = bb["size"]
        tf32 = env.get("tf32", {})
        lines += ["", f"## Backbones at {h}x{w}, batch {bb['batch']}", "",
                  "Time in ms (median) / peak memory in MiB above the weights; solver %: share of the fp32 forward "
                  f"spent in the landmark solver. fp32 is torch's default: cuDNN TF32 {tf32.get('cudnn.allow_tf32')}, "
                  f"matmul TF32 {tf32.get('cuda.matmul.allow_tf32')}.", "",
                  "| model | solver | params (M) | fp32 fwd | fp32 fwd+bwd | bf16 fwd | bf16 fwd+bwd | solver % |",
                  "|---|---|---:|---|---|---|---|---:|"]
        cases = {c["key"]: c for c in bb["cases"]}
        for model, solver in dict.fromkeys((c["model"], c["solver"]) for c in bb["cases"]):
            cells, params, share = [], "-", "-"
            for prec in PRECISIONS:
                for mode in MODES:
                    c = cases.get(f"backbone/{model}/{solver}/{prec}/{mode}")
                    if c and "error" not in c and "skipped" not in c:
                        params = f"{c['params_m']:.1f}"
                        cells.append(f"{_ms(c)} / {_mib(c)}")
                        if prec == "fp32" and mode == "fwd" and c.get("solver_share") is not None:
                            share = f"{100 * c['solver_share']:.0f}"
                    else:
                        why = (c.get("error") or "skipped: " + c["skipped"]) if c else "-"
                        cells.append(why.splitlines()[0][:50].replace("|", "/"))
            lines.append(f"| {model} | {solver} | {params} | " + " | ".join(cells) + f" | {share} |")
    tests = report.get("op_tests")
    if tests:
        lines += ["", "## Op tests", "", f"`pytest {' '.join(tests.get('paths', []))}`: {tests['summary']}."]
        lines += [f"- FAILED {f}" for f in tests.get("failures", [])[:20]]
    san = report.get("sanitizer")
    if san:
        lines += ["", "## compute-sanitizer", ""]
        lines += [f"- {tool}: {s['status']} ({s['summary']})" for tool, s in san.items()]
    lines += ["", "## Not covered", ""] + [f"- {x}" for x in report["not_covered"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, current environment, seconds")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "work_dirs" / "gpu_check"),
                        help="output folder ($OUT on the device)")
    parser.add_argument("--budget", type=float, default=None, help="overall seconds (device 340, smoke 120)")
    parser.add_argument("--site", default="/tmp/site", help="folder the carried wheels are installed into")
    parser.add_argument("--wheels", default=str(ROOT / ".gpu_wheels"), help="folder of the carried wheels")
    parser.add_argument("--python", default=None, help="interpreter of the workers (default: this one)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PHASES, help="phases not to run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit status 1 when a phase failed (targets are reported, not enforced)."""
    return Check(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
