"""Run one benchmark case in a fresh interpreter, so that one case's allocations and caches cannot leak into another's.

The benchmark tools re-invoke themselves with ``--worker <spec as JSON>``; the worker prints its result as one JSON
line (the last line starting with ``{``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_case_subprocess(script: str | Path, spec: dict[str, Any], timeout: float, *, env: dict[str, str] | None = None,
                        cwd: str | Path | None = None) -> dict[str, Any]:
    """``python script --worker <spec>``; its JSON result, or ``spec`` plus an ``error`` field (timeout, exit code
    with the output's last lines, or no JSON line)."""
    cmd = [sys.executable, os.path.abspath(script), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**spec, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])
