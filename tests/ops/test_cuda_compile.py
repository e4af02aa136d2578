"""The CUDA kernels compile with nvcc for sm_80 and sm_90 (no GPU needed): tools/check_cuda_compile.sh.

A successful check is remembered under build/cuda-compile-ok/ keyed by the exact CUDA sources, the script and the
nvcc version, so local re-runs with unchanged kernels skip the minute of nvcc; a fresh checkout (CI) always compiles.
MMSOFT_FORCE_CUDA_CHECK=1 forces the compilation.
"""
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "check_cuda_compile.sh"
NVCC = os.environ.get("NVCC", "nvcc")

pytestmark = pytest.mark.skipif(shutil.which(NVCC) is None, reason="nvcc is not installed")


def run_check(**env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env={**os.environ, **env},
                          timeout=600)


def _stamp() -> Path:
    cuda_dir = ROOT / "mmsoft" / "csrc" / "cuda"
    digest = hashlib.sha1(subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout.encode())
    for path in sorted([SCRIPT, *cuda_dir.iterdir()]):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return ROOT / "build" / "cuda-compile-ok" / digest.hexdigest()


def test_cuda_sources_compile_for_sm80_and_sm90():
    sources = sorted(p.name for p in (ROOT / "mmsoft" / "csrc" / "cuda").glob("*.cu"))
    assert sources, "no CUDA sources found"
    stamp = _stamp()
    if stamp.exists() and os.environ.get("MMSOFT_FORCE_CUDA_CHECK") != "1":
        return  # these exact sources compiled with this nvcc before
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    for name in sources:
        assert f"ok    mmsoft/csrc/cuda/{name} -> sm_80, sm_90" in result.stdout, result.stdout
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(result.stdout)


def test_check_fails_on_a_broken_kernel(tmp_path):
    (tmp_path / "broken.cu").write_text('#include "soft_attention_tiles.cuh"\n'
                                        "__global__ void broken(float* p) { p[0] = not_declared; }\n")
    result = run_check(MMSOFT_CUDA_SRC=str(tmp_path), CUDA_ARCHS="80")
    assert result.returncode != 0
    assert "FAIL" in result.stdout and "not_declared" in result.stdout
