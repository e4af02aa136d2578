"""tools/gpu_check.sh: the smoke mode runs every phase of the GPU check on the CPU at tiny sizes and its report holds
every planned case with finite numbers; the driver's parsing (pytest, compute-sanitizer), target evaluation, case
plan and worker restarts are checked on synthetic inputs (no GPU is needed for any of this)."""
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmsoft.ops import ext_loader

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "analysis" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.skipif(not ext_loader.ext_available("cpu"), reason="mmsoft._ext is not built")
def test_smoke_mode_reports_every_planned_case(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--smoke"], capture_output=True, text=True,
                          env=env, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert len(list(tmp_path.iterdir())) <= 8  # what the device tool brings back
    phases = {name: p["status"] for name, p in report["phases"].items()}
    assert phases == {"install": "skipped", "build": "skipped", "env": "ok", "checks": "ok", "timings": "ok"}

    plan = gc.plans()["smoke"]
    att = {c["key"]: c for c in report["attention"]["cases"]}
    bb = {c["key"]: c for c in report["backbone"]["cases"]}
    expected = gc.attention_cases(plan) + gc.backbone_cases(plan, gc.solvers_from_source())
    assert set(att) | set(bb) == {c["key"] for c in expected}

    for dtype in plan["attention"]["dtypes"]:
        for impl in gc.ATTENTION_IMPLS:
            for mode in gc.MODES:
                case = att[f"attention/{dtype}/{impl}/{mode}"]
                assert "error" not in case, case
                assert _finite_positive(case["time_s"]) and case["peak_bytes"] >= 0
                assert case["resolved_impl"] == impl and case["n"] == plan["attention"]["n"]
        agreement = att[f"agreement/{dtype}"]
        assert agreement["agree"] is True
        errors = agreement["checks"][0]["errors"]
        assert set(errors) == {"out", "dq", "dk", "dv"}
        for what, err in errors.items():
            assert all(math.isfinite(e) for e in err.values()), what
            assert err["ext_vs_reference"] < (1e-4 if dtype == "float32" else 3e-2), (dtype, what)
    newton = att["newton_gemm"]
    a = plan["attention"]
    assert newton["newton_flop"] == 4 * a["num_iters"] * a["bh"] * a["m"] ** 3
    assert all(_finite_positive(newton[k]) for k in ("newton_tflops", "gemm_tflops", "ratio"))

    solvers = gc.solvers_from_source()
    assert {c["solver"] for c in bb.values() if c["model"] == "soft-t"} == set(solvers)
    for case in bb.values():
        if case["model"] in gc.TIMM_MODELS and "skipped" in case:
            assert "timm" in case["skipped"]
            continue
        assert "error" not in case, case
        assert _finite_positive(case["time_s"]) and case["peak_bytes"] >= 0
        if case["model"] == "soft-t":
            assert 10 < case["params_m"] < 15  # SOFT-Tiny: 12.6 M
            assert ("solver_share" in case) == case["measure_share"]
            if case["measure_share"]:
                assert 0 <= case["solver_share"] <= 1 and case["solver_s"] >= 0

    names = [t["target"] for t in report["targets"]]
    assert len(names) == 9 and any("Newton-Schulz" in n for n in names) and any("PVTv2-B1" in n for n in names)
    attention_targets = [t for t in report["targets"] if t["target"].startswith("attention")]
    assert all(t["passed"] in (True, False) and t["measured"] != "not measured" for t in attention_targets)

    tests = report["op_tests"]
    assert tests["status"] == "ok" and tests["counts"]["failed"] == 0
    assert tests["counts"]["skipped"] == tests["gpu_counts"]["skipped"] > 10  # the GPU-only file, skipped here
    sanitize = report["sanitizer"]["none"]
    assert sanitize["status"] == "ok" and sanitize["workload"]["agree"] is True
    assert len(sanitize["workload"]["checks"]) == len(plan["sanitize"]["shapes"]) * len(plan["sanitize"]["dtypes"])

    md = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## Targets", "## Attention core", "## Backbones", "## Op tests", "## Not covered"):
        assert heading in md
    assert "| float32 | ext |" in md and "| soft-t | newton_eigh |" in md
    assert md in proc.stdout  # the report is also printed (the device tool returns the output's tail)


def test_parse_pytest_from_junit_and_from_a_killed_run(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(textwrap.dedent("""\
        <testsuites><testsuite name="pytest" tests="3">
          <testcase classname="tests.ops.test_a" name="test_x[cuda-torch.float32]"/>
          <testcase classname="tests.ops.test_a" name="test_y[cpu]"><failure message="assert 0.5 &lt; 0.1&#10;more"/>
          </testcase>
          <testcase classname="tests.ops.test_cuda_device" name="test_z"><skipped message="needs a GPU"/></testcase>
        </testsuite></testsuites>"""))
    outcomes = gc.parse_pytest(junit, "")
    assert outcomes == {"tests.ops.test_a::test_x[cuda-torch.float32]": ("passed", ""),
                        "tests.ops.test_a::test_y[cpu]": ("failed", "assert 0.5 < 0.1"),
                        "tests.ops.test_cuda_device::test_z": ("skipped", "needs a GPU")}
    log = ("tests/ops/test_a.py::test_x[cuda-torch.float32] PASSED  [ 10%]\n"
           "tests/ops/test_a.py::test_y[cpu] FAILED  [ 20%]\n"
           "tests/ops/test_b.py::test_w SKIPPED (needs a GPU)  [ 30%]\n")
    outcomes = gc.parse_pytest(tmp_path / "missing.xml", log)
    assert [o for o, _ in outcomes.values()] == ["passed", "failed", "skipped"]


MEMCHECK_OUTPUT = """\
========= COMPUTE-SANITIZER
========= Invalid __global__ read of size 4 bytes
=========     at void mmsoft::cuda::detail::(anonymous namespace)::matmul_fwd_kernel<float, TileCfg<64, 32>>(...)+0x1a0
=========     by thread (3,0,0) in block (0,0,0)
=========     Address 0x7f0000000400 is out of bounds
=========
========= Invalid __global__ write of size 4 bytes
=========     at void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(...)+0x40
=========
========= ERROR SUMMARY: 2 errors
"""
RACECHECK_OUTPUT = """\
========= COMPUTE-SANITIZER
========= Error: Race reported between Write access at void mmsoft::cuda::detail::grad_cols_kernel<float>(...)+0x1d0
=========     and Read access at void mmsoft::cuda::detail::grad_cols_kernel<float>(...)+0x1f0 [1916 hazards]
=========
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
"""


def test_parse_sanitizer_counts_and_attribution():
    assert gc.parse_sanitizer(MEMCHECK_OUTPUT) == {"errors": 2, "reports_naming_mmsoft": 1}
    assert gc.parse_sanitizer(RACECHECK_OUTPUT) == {"hazards": 1, "errors": 1, "warnings": 0,
                                                    "reports_naming_mmsoft": 1}
    clean = "========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 0 errors\n"
    assert gc.parse_sanitizer(clean) == {"errors": 0, "reports_naming_mmsoft": 0}
    assert gc.parse_sanitizer("crashed before the summary") == {"reports_naming_mmsoft": 0}


def _att(dtype, impl, mode, time_s, peak):
    return {"kind": "attention", "key": f"attention/{dtype}/{impl}/{mode}", "dtype": dtype, "time_s": time_s,
            "peak_bytes": peak}


def _bb(model, solver, prec, time_s):
    return {"key": f"backbone/{model}/{solver}/{prec}/fwd", "model": model, "solver": solver, "precision": prec,
            "mode": "fwd", "time_s": time_s}


def test_targets_pass_fail_and_not_measured():
    mib = 2**20
    attention = [_att("float32", "reference", "fwdbwd", 0.060, 3000 * mib), _att("float32", "ext", "fwdbwd", 0.010,
                                                                                  100 * mib),
                 _att("float32", "reference", "fwd", 0.020, 900 * mib), _att("float32", "ext", "fwd", 0.008, 100 * mib),
                 _att("bfloat16", "reference", "fwdbwd", 0.040, 3000 * mib),
                 {**_att("bfloat16", "ext", "fwdbwd", 0, 0), "error": "boom"},
                 {"kind": "newton_gemm", "key": "newton_gemm", "ratio": 0.4, "newton_tflops": 20.0,
                  "gemm_tflops": 50.0}]
    backbone = [_bb("soft-t", "newton", "fp32", 0.100), _bb("pvt_v2_b1", "-", "fp32", 0.120),
                _bb("soft-t", "newton", "bf16", 0.090), _bb("pvt_v2_b1", "-", "bf16", 0.050),
                _bb("soft-t", "newton_eigh", "fp32", 0.010)]
    rows = {t["target"]: t["passed"] for t in gc.evaluate_targets(attention, backbone)}
    assert rows["attention float32 fwd+bwd: ext speed-up over reference"] is True          # 6x
    assert rows["attention float32 fwd+bwd: peak memory, reference / ext"] is True         # 30x
    assert rows["attention float32 fwd: peak memory, reference / ext"] is False            # 9x
    assert rows["attention bfloat16 fwd+bwd: ext speed-up over reference"] is None         # ext failed
    assert rows["attention bfloat16 fwd: peak memory, reference / ext"] is None            # not run
    assert rows["Newton-Schulz TFLOP/s vs the same-size fp32 batched GEMM"] is False        # 40%
    assert rows["SOFT-Tiny-Norm backbone forward (fp32, solver newton) vs PVTv2-B1"] is True
    assert rows["SOFT-Tiny-Norm backbone forward (bf16, solver newton) vs PVTv2-B1"] is False  # other solvers ignored


def test_device_plan_covers_every_model_solver_precision_and_mode():
    plan = gc.plans()["device"]
    solvers = gc.solvers_from_source()
    assert solvers[0] == "newton" and {"newton_eigh", "cholesky"} <= set(solvers)
    cases = gc.backbone_cases(plan, solvers)
    keys = [c["key"] for c in cases]
    assert len(keys) == len(set(keys))
    want = {(m, s, p, mo) for m in ("soft-t", "soft-s") for s in solvers for p in gc.PRECISIONS for mo in gc.MODES}
    want |= {(m, "-", p, mo) for m in gc.TIMM_MODELS for p in gc.PRECISIONS for mo in gc.MODES}
    assert {(c["model"], c["solver"], c["precision"], c["mode"]) for c in cases} == want
    assert plan["backbone"]["size"] == [800, 1344]
    # the speed target's cases first, the solver that synchronises with the host last
    assert keys[0] == "backbone/soft-t/newton/fp32/fwd" and keys[4] == "backbone/pvt_v2_b1/-/fp32/fwd"
    assert cases[-1]["solver"] == "newton_eigh"
    att = gc.attention_cases(plan)
    assert (att[0]["kind"], att[0]["dtypes"]) == ("agreement", ["float32"])
    shape = {(c["bh"], c["n"], c["m"], c["d"]) for c in att if c["kind"] == "attention"}
    assert shape == {(2, 65536, 1024, 32)}
    assert {(c["dtype"], c["impl"], c["mode"]) for c in att if c["kind"] == "attention"} == {
        (d, i, m) for d in ("float32", "bfloat16") for i in gc.ATTENTION_IMPLS for m in gc.MODES}


FAKE_WORKER = """\
import json, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with open(args["--results"], "a") as f:
    for case in json.load(open(args["--cases"])):
        f.write(json.dumps({"event": "start", "key": case["key"]}) + "\\n"); f.flush()
        if case.get("hang"):
            time.sleep(60)
        if case.get("die"):
            sys.exit(7)
        f.write(json.dumps({"event": "done", "key": case["key"], "result": {"value": case["key"]}}) + "\\n"); f.flush()
"""


def test_run_cases_survives_a_hanging_and_a_dying_case(tmp_path, monkeypatch):
    """A case past the per-case limit is killed and recorded, a worker that dies is restarted on the cases left."""
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    monkeypatch.setattr(gc, "WORKLOADS", worker)
    check = gc.Check(gc.parse_args(["--smoke", "--out", str(tmp_path / "out")]))
    check.plan = {**check.plan, "case_timeout": 1}
    cases = [{"key": "a"}, {"key": "b", "hang": True}, {"key": "c"}, {"key": "d", "die": True}, {"key": "e"}]
    try:
        results = check.run_cases(cases, timeout=60, log=tmp_path / "worker.log")
    finally:
        check.console.close()
    assert results["a"] == {"value": "a"} and results["c"] == {"value": "c"} and results["e"] == {"value": "e"}
    assert results["b"]["error"] == "timeout after 1 s"
    assert results["d"]["error"].startswith("worker died (exit 7)")
