#!/usr/bin/env bash
# Builds the CUDA core with nvcc and runs the standalone self-test (no TensorFlow needed).
#   custom_ops/inverse_conv/selftest/run_selftest.sh            build for this GPU and run
#   custom_ops/inverse_conv/selftest/run_selftest.sh --compile-only   build for sm_80 and sm_90
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/build"
mkdir -p "$out"
if [[ "${1:-}" == "--compile-only" ]]; then
  arch=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
else
  arch=(-arch=native)
fi
# The CPU core is plain C++ and compiles as CUDA source too; one nvcc line keeps this simple.
nvcc -std=c++17 -O3 --expt-relaxed-constexpr "${arch[@]}" -x cu \
  "$here/selftest.cu" "$here/../core/inverse_conv_gpu.cu.cc" "$here/../core/inverse_conv_cpu.cc" \
  -o "$out/selftest"
if [[ "${1:-}" == "--compile-only" ]]; then
  echo "compiled $out/selftest"
else
  "$out/selftest"
fi
