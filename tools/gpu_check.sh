#!/usr/bin/env bash
# GPU validation of mmsoft in one run: the CUDA attention core and the backbones on a real GPU.
#
#   bash tools/gpu_check.sh --prepare   # here, with network: fetch / build the wheels the device lacks into
#                                       # .gpu_wheels/ (gitignored) and print the device call to make
#   bash tools/gpu_check.sh             # on the GPU machine, from the repo root, no network: install the carried
#                                       # wheels into /tmp/site, build mmsoft._ext for the GPU, run the op tests on
#                                       # CUDA, compute-sanitizer, the timings; JSON + markdown under $OUT
#   bash tools/gpu_check.sh --smoke     # anywhere, CPU, seconds: the same driver at tiny sizes (used by CI)
#
# Extra arguments go to tools/analysis/gpu_check.py (e.g. --budget 300, --skip build, --out DIR); see its --help.
# Environment: PYTHON (interpreter; default .venv/bin/python when present for --smoke / --prepare, else python3),
# OUT (output folder; default work_dirs/gpu_check[_smoke]), GPU_CHECK_SITE (install target, default /tmp/site),
# TORCH_CUDA_ARCH_LIST (default: the GPU's compute capability from nvidia-smi).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WHEELS="$ROOT/.gpu_wheels"
SITE=${GPU_CHECK_SITE:-/tmp/site}
# What the device lacks (it has torch, numpy, opencv-python-headless, pyyaml, rich, packaging, pillow, timm, pytest).
# Versions as tools/install.sh pins them for mmsoft; mmcv is built here without its compiled ops (mmcv-lite).
MMCV_VERSION=2.1.0
PURE_WHEELS=("mmengine==0.10.7" "addict==2.4.0" "termcolor==3.3.0" "yapf==0.43.0" "platformdirs==4.3.6")
CARRY_LIMIT_MIB=64

default_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$ROOT/.venv/bin/python" ]; then echo "$ROOT/.venv/bin/python"
  else echo python3; fi
}

prepare() {
  set -e
  local py; py=$(default_python)
  mkdir -p "$WHEELS"
  echo "[gpu_check --prepare] pure-Python wheels for CPython 3.12 into $WHEELS"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "${PURE_WHEELS[@]}"
  if ! ls "$WHEELS"/mmcv_lite-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    # mmcv publishes no pure wheel: build one from the sdist with MMCV_WITH_OPS=0 (its setup.py then names the
    # project mmcv-lite, hence a local directory rather than the 'mmcv==' requirement), in a throwaway venv with a
    # setuptools that still has pkg_resources (mmcv's setup.py imports it).
    local tmp; tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_mmcv.XXXXXX")
    trap 'rm -rf "$tmp"' RETURN
    echo "[gpu_check --prepare] building mmcv-lite $MMCV_VERSION (mmcv without compiled ops) in $tmp"
    python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/python" -m pip install -q "setuptools<70" wheel
    "$tmp/venv/bin/python" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
      -d "$tmp" "mmcv==$MMCV_VERSION"
    tar -xzf "$tmp/mmcv-$MMCV_VERSION.tar.gz" -C "$tmp"
    MMCV_WITH_OPS=0 "$tmp/venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation \
      -w "$WHEELS" "$tmp/mmcv-$MMCV_VERSION"
  fi
  # Every carried wheel must install on the device's CPython 3.12 and hold no compiled code.
  "$py" - "$WHEELS" <<'EOF'
import sys, zipfile
from pathlib import Path
bad = []
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    tag = whl.name[:-4].split("-")[-3:]
    binaries = [n for n in zipfile.ZipFile(whl).namelist() if n.endswith((".so", ".pyd", ".dll"))]
    if tag[1:] != ["none", "any"] or not any(t in ("py3", "cp312") for t in tag[0].split(".")) or binaries:
        bad.append(f"{whl.name}: tag {'-'.join(tag)}, binaries {binaries[:3]}")
    print(f"  {whl.name} ({whl.stat().st_size / 2**20:.2f} MiB)")
if bad:
    sys.exit("[gpu_check --prepare] not pure Python 3 wheels:\n  " + "\n  ".join(bad))
EOF
  local mib; mib=$(du -sm "$WHEELS" | cut -f1)
  if [ "$mib" -gt "$CARRY_LIMIT_MIB" ]; then
    echo "[gpu_check --prepare] $WHEELS holds $mib MiB, more than the $CARRY_LIMIT_MIB MiB that can be carried" >&2
    exit 1
  fi
  cat <<EOF

[gpu_check --prepare] done: $WHEELS ($mib MiB). On a session that holds a GPU machine, make this device call
(the working tree travels with it, uncommitted files included; .gpu_wheels is gitignored, hence carried):

  run(command="bash tools/gpu_check.sh", carry=[".gpu_wheels"], timeout_s=420)

It needs about 6 minutes (the driver's own budget is 340 s; --budget changes it) and brings back under \$OUT:
gpu_check.json, gpu_check.md, gpu_check.log, build.log, pytest_ops.log, sanitizer.log, timings.log.
EOF
}

case "${1:-}" in
  -h|--help)
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0 ;;
  --prepare)
    shift
    prepare "$@"
    exit $? ;;
  --smoke)
    shift
    PY=$(default_python)
    export OUT=${OUT:-$ROOT/work_dirs/gpu_check_smoke}
    exec "$PY" tools/analysis/gpu_check.py --smoke --out "$OUT" "$@" ;;
  *)
    # On the device: python3 is the machine's torch interpreter. The driver installs the wheels into $SITE and puts
    # $SITE and the repo first on PYTHONPATH for everything it starts.
    PY=${PYTHON:-python3}
    export OUT=${OUT:-$ROOT/work_dirs/gpu_check}
    exec "$PY" tools/analysis/gpu_check.py --out "$OUT" --site "$SITE" --wheels "$WHEELS" "$@" ;;
esac
