"""tools/analysis/benchmark_attention.py runs end to end on a tiny problem and writes its JSON and plot.
It is a tool, not a timed test: nothing here asserts speed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmsoft.ops import ext_loader

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not ext_loader.ext_available("cpu"), reason="mmsoft._ext is not built")
def test_benchmark_tool_smoke(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "analysis" / "benchmark_attention.py"), "--device", "cpu",
           "--n-list", "256", "--m", "16", "--d", "16", "--bh", "2", "--impls", "reference,ext", "--modes", "fwdbwd",
           "--repeat", "1", "--num-iters", "5", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "benchmark_attention_cpu.json").read_text())
    rows = {(r["impl"], r["n"], r["mode"]): r for r in data["results"]}
    assert set(rows) == {("reference", 256, "fwdbwd"), ("ext", 256, "fwdbwd")}
    for row in rows.values():
        assert "error" not in row, row
        assert row["time_s"] > 0 and row["peak_bytes"] >= 0
    assert rows[("ext", 256, "fwdbwd")]["resolved_impl"] == "ext"
    assert data["meta"]["ext"]["built"] is True
    assert "| 256 | ext |" in result.stdout
    png = tmp_path / "benchmark_attention_cpu.png"
    if "and " + str(png) in result.stdout:  # matplotlib present
        assert png.stat().st_size > 0
