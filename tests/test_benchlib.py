"""tools/analysis/benchlib: the benchmark tools' fresh-interpreter runner (on tiny worker scripts), peak memory and
profiler-range timing."""
import os
import textwrap

import pytest
import torch
from benchlib.case_subprocess import run_case_subprocess
from benchlib.process_memory import PeakMemory
from benchlib.profiler_ranges import range_seconds

from mmsoft.ops.reference import LANDMARK_SOLVE_RANGE

WORKER = textwrap.dedent("""
    import json, os, sys
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    print("log line {not json")
    if spec["mode"] == "ok":
        print(json.dumps({**spec, "cwd": os.getcwd(), "env": os.environ.get("CASE_ENV")}))
    elif spec["mode"] == "fail":
        sys.exit("worker broke")
    elif spec["mode"] == "sleep":
        import time; time.sleep(30)
""")


def test_result_env_and_cwd(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = run_case_subprocess(script, {"mode": "ok"}, timeout=60, env={"CASE_ENV": "x"}, cwd=tmp_path)
    assert out == {"mode": "ok", "cwd": str(tmp_path), "env": "x"}


def test_errors_become_entries(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    failed = run_case_subprocess(script, {"mode": "fail"}, timeout=60)
    assert failed["mode"] == "fail" and failed["error"] == "exit 1: worker broke"
    silent = run_case_subprocess(script, {"mode": "none"}, timeout=60)
    assert silent["error"].startswith("exit 0: ")  # ran, but printed no JSON result
    slow = run_case_subprocess(script, {"mode": "sleep"}, timeout=1)
    assert slow["error"] == "timeout after 1 s"


def _matmuls(count: int) -> None:
    a = torch.randn(200, 200)
    for _ in range(count):
        a = torch.tanh(a @ a)


def test_nested_ranges_count_once():
    import time

    # sleeps, not computations: their durations do not depend on the machine's load or caches
    def nested() -> None:
        with torch.profiler.record_function(LANDMARK_SOLVE_RANGE):
            time.sleep(0.1)
            with torch.profiler.record_function(LANDMARK_SOLVE_RANGE):  # one solver calling another
                time.sleep(0.1)
        time.sleep(0.2)  # outside any range

    # half of the run is inside the outer range; counting the inner range again would give three quarters
    wall, inside = range_seconds(nested, LANDMARK_SOLVE_RANGE)
    assert 0.4 * wall < inside < 0.62 * wall, (wall, inside)


def test_range_seconds_zero_without_ranges():
    wall, inside = range_seconds(lambda: _matmuls(5), LANDMARK_SOLVE_RANGE)
    assert wall > 0 and inside == 0


def _best_of(tries: int, measure) -> int:
    """The largest of ``tries`` measurements. The resident set also holds file-backed pages (mapped libraries), which
    the kernel may reclaim during a block when the page cache is busy (a full test run): the resident size then drops
    under the block's base and hides up to as much of its peak (seen as a peak of 0 in full test runs,
    never alone). A peak that one of three tries sees is a peak PeakMemory can measure."""
    return max(measure() for _ in range(tries))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux peak RSS only")
def test_peak_memory_sees_a_temporary_allocation():
    def measure() -> int:
        with PeakMemory(cuda=False) as mem:
            block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
            del block
        return mem.peak_bytes

    peak = _best_of(3, measure)
    assert peak >= 48 * 2**20, peak


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux peak RSS only")
def test_garbage_freed_inside_the_block_does_not_hide_its_peak():
    import gc

    # 256 MiB of earlier work, reachable only through a reference cycle: freed by the next garbage collection. Were
    # that collection inside the block (it runs whenever the interpreter decides), the resident size would drop
    # below the block's base and the block's own 64 MiB would not show.
    def measure() -> int:
        cycle: list = [torch.ones(256 * 2**20 // 4)]
        cycle.append(cycle)
        del cycle
        with PeakMemory(cuda=False) as mem:
            gc.collect()
            block = torch.ones(64 * 2**20 // 4)
            del block
        assert mem.method == "VmHWM after clear_refs"
        return mem.peak_bytes

    peak = _best_of(3, measure)
    assert peak >= 48 * 2**20, peak
