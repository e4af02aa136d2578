"""Runs the CUDA kernels' own source on CPU threads (tests/ops/cuda_emulation: one std::thread per CUDA thread,
std::barrier for __syncthreads, dynamic shared memory poisoned with NaN and guarded by a canary) and compares every
launcher with a float64 reference. This checks indexing, tiling, masking of partial tiles, split reductions and
synchronisation without a GPU; it says nothing about speed. The binary is cached under build/cuda-emulation."""
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / "tests" / "ops" / "cuda_emulation"
CUDA_SRC = ROOT / "mmsoft" / "csrc" / "cuda"
CXX = os.environ.get("CXX", "g++")

pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason="no C++ compiler")


def build_harness() -> Path:
    sources = sorted([*EMU.rglob("*.h"), *EMU.glob("*.cpp"), *CUDA_SRC.glob("*.cu"), *CUDA_SRC.glob("*.cuh"),
                      *CUDA_SRC.glob("*.h")])
    flags = ["-std=c++20", "-O1", "-pthread", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
             f"-I{EMU / 'include'}", f"-I{CUDA_SRC}"]
    if os.environ.get("MMSOFT_EMU_SANITIZE") == "1":
        flags += ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    digest = hashlib.sha1(" ".join([CXX, *flags]).encode())
    for src in sources:
        digest.update(src.name.encode() + src.read_bytes())
    binary = ROOT / "build" / "cuda-emulation" / digest.hexdigest()[:16] / "emulate_kernels"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(".tmp")
        result = subprocess.run([CXX, *flags, str(EMU / "emulate_kernels.cpp"), "-o", str(tmp)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-5000:]
        tmp.rename(binary)
    return binary


def test_cuda_kernels_match_reference_in_emulation():
    result = subprocess.run([str(build_harness())], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "ALL PASSED" in result.stdout
    checked = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    # 9 float32 / float16 / bfloat16 problems (2 with q and k at offset 100) x 8 checks + 2 launcher checks.
    assert len(checked) == 9 * 8 + 2, result.stdout
    assert "FAIL" not in result.stdout
