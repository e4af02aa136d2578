#!/usr/bin/env bash
# Create (or reuse) .venv and install the pinned OpenMMLab stack plus mmsoft in editable mode.
# Idempotent: a second run only verifies versions. Handles these traps of the stack:
#  - torch is pinned through a constraints file so no dependency can pull a newer (CUDA) torch;
#    a torch already present in the venv (e.g. a CUDA build) is kept.
#  - mmcv 2.1.0 is built from source with its ops (setuptools<70, --no-build-isolation) once per
#    torch build; the wheel is kept in pip's cache dir and reused afterwards.
#  - setuptools is put back to 77..80 afterwards (mmengine needs pkg_resources, torch wants >=77).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMSOFT_VENV:-$ROOT/.venv}
BASE_PY=${PYTHON:-python3}

log() { printf '[install] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment at $VENV"
  "$BASE_PY" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pipq() { "$PY" -m pip --disable-pip-version-check -q "$@"; }

# version NAME -> installed version or empty
version() { "$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1"; }

# 1. torch: keep whatever torch the venv already has, else the pinned CPU/CUDA wheel.
TORCH_VER=$(version torch)
if [ -z "$TORCH_VER" ]; then
  log "installing torch==2.13.0"
  pipq install "torch==2.13.0"
  TORCH_VER=$(version torch)
fi
CONSTRAINTS="$VENV/mmsoft-constraints.txt"
printf 'torch==%s\n' "$TORCH_VER" > "$CONSTRAINTS"
log "torch $TORCH_VER (pinned via $CONSTRAINTS)"

# 2. mmcv 2.1.0 with compiled ops, built once per torch build and cached as a wheel.
mmcv_ok() { "$PY" -c "import mmcv, mmcv.ops; from mmcv.ops import nms; assert mmcv.__version__ == '2.1.0'" >/dev/null 2>&1; }
if ! mmcv_ok; then
  CACHE_DIR=$("$PY" -m pip cache dir 2>/dev/null || echo "$HOME/.cache/pip")
  WHEELHOUSE="$CACHE_DIR/mmsoft-wheels/torch-$TORCH_VER-$("$PY" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')"
  mkdir -p "$WHEELHOUSE"
  # mmcv's own runtime requirements, constrained so nothing touches torch.
  pipq install -c "$CONSTRAINTS" "mmengine==0.10.7" addict packaging Pillow pyyaml yapf "opencv-python-headless" ninja wheel
  if ! ls "$WHEELHOUSE"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    log "building mmcv 2.1.0 with ops from source (about 9 minutes on 2 cores; cached afterwards in $WHEELHOUSE)"
    pipq install "setuptools<70"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip wheel --disable-pip-version-check -q \
      --no-build-isolation --no-deps -c "$CONSTRAINTS" -w "$WHEELHOUSE" "mmcv==2.1.0"
  else
    log "reusing cached mmcv wheel from $WHEELHOUSE"
  fi
  # opencv-python (GUI build) is what mmcv names; the headless build provides the same module.
  pipq install -c "$CONSTRAINTS" --no-deps "$WHEELHOUSE"/mmcv-2.1.0-*.whl
fi
mmcv_ok || { echo "[install] ERROR: mmcv 2.1.0 with ops does not import; see the build log above" >&2; exit 1; }

# 3. setuptools back to the range where pkg_resources exists and torch is satisfied.
SETUPTOOLS_VER=$(version setuptools)
case "$SETUPTOOLS_VER" in
  77.*|78.*|79.*|80.*) ;;
  *) log "setting setuptools to >=77,<81 (was ${SETUPTOOLS_VER:-none})"; pipq install "setuptools>=77,<81" ;;
esac

# 4. The rest of the stack and the dev tools, then mmsoft itself (editable).
STACK_OK=$("$PY" - <<'PYEOF'
import importlib.metadata as m
want = {"mmengine": "0.10.7", "mmdet": "3.3.0", "mmsegmentation": "1.2.2"}
extra = ["ftfy", "regex", "pytest", "ruff", "pycocotools", "mmsoft"]
def has(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
ok = all(has(k) == v for k, v in want.items()) and all(has(k) for k in extra)
print("yes" if ok else "no")
PYEOF
)
if [ "$STACK_OK" != "yes" ]; then
  log "installing mmengine/mmdet/mmsegmentation and dev tools"
  pipq install -c "$CONSTRAINTS" "mmengine==0.10.7" "mmdet==3.3.0" "mmsegmentation==1.2.2" \
    ftfy regex pycocotools pytest ruff
fi
# mmsoft's compiled attention core: ninja keeps objects in build/mmsoft-ext, so a re-run is a no-op.
log "building mmsoft._ext (C++ CPU kernels; CUDA kernels too when torch has CUDA and nvcc is found)"
(cd "$ROOT" && MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py -q build_ext --inplace)
EDITABLE_AT=$(cd / && "$PY" -c "import os, mmsoft; print(os.path.dirname(os.path.dirname(mmsoft.__file__)))" \
  2>/dev/null || true)
if [ "$EDITABLE_AT" != "$ROOT" ]; then
  log "installing mmsoft (editable)"
  pipq install -c "$CONSTRAINTS" --no-build-isolation --no-deps -e "$ROOT"
fi
(cd / && "$PY" -c "import mmsoft, mmdet, mmseg, mmcv, torch; print('[install] ok: torch', torch.__version__, '| mmcv', mmcv.__version__, '| mmdet', mmdet.__version__, '| mmseg', mmseg.__version__, '| mmsoft', mmsoft.__version__); mmsoft.ops.info()")
