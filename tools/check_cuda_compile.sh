#!/usr/bin/env bash
# Compile every mmsoft/csrc/cuda/*.cu with nvcc for sm_80 and sm_90 (no GPU and no CUDA torch needed: the kernels
# include no torch headers). Uses the flags torch's CUDAExtension passes (half/bf16 operators off, C++20), treats
# warnings as errors, prints what it compiled, and exits non-zero on any failure.
#   tools/check_cuda_compile.sh                 # sm_80 and sm_90
#   CUDA_ARCHS="80 86 90" tools/check_cuda_compile.sh
#   NVCC=/usr/local/cuda/bin/nvcc NVCC_STD=c++17 tools/check_cuda_compile.sh
#   MMSOFT_CUDA_SRC=/some/dir tools/check_cuda_compile.sh   # another source directory (used by the tests)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NVCC=${NVCC:-nvcc}
ARCHS=${CUDA_ARCHS:-"80 90"}
STD=${NVCC_STD:-c++20}
SRC_DIR=${MMSOFT_CUDA_SRC:-$ROOT/mmsoft/csrc/cuda}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/mmsoft-cuda-check.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda_compile: nvcc not found (set NVCC=...)" >&2
  exit 2
fi
echo "check_cuda_compile: $("$NVCC" --version | tail -n 2 | head -n 1), archs: $ARCHS, -std=$STD"

FLAGS=(-std="$STD" -O3 -lineinfo --compiler-options -fPIC -Werror all-warnings
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
       -I"$SRC_DIR" -I"$ROOT/mmsoft/csrc/cuda")
GENCODE=()
for arch in $ARCHS; do GENCODE+=(-gencode "arch=compute_${arch},code=sm_${arch}"); done

shopt -s nullglob
sources=("$SRC_DIR"/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "check_cuda_compile: no .cu files under $SRC_DIR" >&2
  exit 1
fi
failed=0
for src in "${sources[@]}"; do
  name=$(basename "$src" .cu)
  start=$(date +%s)
  # One nvcc call per file builds all archs (--threads compiles them in parallel).
  if "$NVCC" -c "$src" -o "$OUT/$name.o" "${GENCODE[@]}" "${FLAGS[@]}" --threads 2 >"$OUT/$name.log" 2>&1; then
    echo "  ok    ${src#"$ROOT"/} -> sm_${ARCHS// /, sm_} ($(( $(date +%s) - start ))s)"
  else
    echo "  FAIL  ${src#"$ROOT"/}:"
    sed 's/^/        /' "$OUT/$name.log"
    failed=1
  fi
done
if [ $failed -ne 0 ]; then
  echo "check_cuda_compile: FAILED" >&2
  exit 1
fi
echo "check_cuda_compile: all ${#sources[@]} CUDA sources compiled"
