#!/usr/bin/env bash
# One lease of a GPU machine (device tool) for the GPU solve, with no TensorFlow there: build the
# core for this GPU, correctness + timings vs cuDNN (bench_ops_gpu), compute-sanitizer, and an
# ncu profile of the Glow-shape solves. Everything goes to $OUT (log, ops_gpu.{md,json}, ncu).
# Each step has its own time limit so that one slow tool cannot eat the lease.
OUT=${OUT:-build/gpu_session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { echo "== $(date +%T) $*"; }
glow_solves='import torch
from benchmarks.bench_ops_gpu import *
core, rng = Core(), np.random.default_rng(0)
for b, s, ch, k in GLOW:
  x = torch.randn(b, s, s, ch, device="cuda")
  kernel = torch.tensor(random_kernel(rng, k, ch), dtype=torch.float32, device="cuda")
  solve, _ = core.solver(x, kernel)
  solve(x, torch.empty_like(x))
torch.cuda.synchronize()'
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
  python3 -c 'import torch; print(torch.__version__, torch.backends.cudnn.version())'
  step build; make -s PYTHON=python3 build/gpu_bench/libtfinvconv_core.so || exit 1
  step bench; timeout 240 python3 -m benchmarks.bench_ops_gpu; echo "bench rc=$?"
  cp benchmarks/results/ops_gpu.* "$OUT"/
  step memcheck; timeout 90 compute-sanitizer --tool memcheck --error-exitcode 1 \
    python3 -m benchmarks.bench_ops_gpu --check-only --small; echo "memcheck rc=$?"
  step ncu; timeout 60 ncu --clock-control none -k regex:SolveKernel --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section InstructionStats python3 -c "$glow_solves" > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$?"
  grep -E "SolveKernel|Duration|Executed Ipc A|Issue Slots Busy|Executed Instructions  |Warp Cycles Per Issued" "$OUT/ncu.txt"
  step ncu stalls; timeout 45 ncu --clock-control none -k regex:SolveKernel -c 1 \
    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    python3 -c "$glow_solves" > "$OUT/ncu_stalls.txt" 2>&1; echo "ncu stalls rc=$?"
  awk '/stalled/ {print $NF, $1}' "$OUT/ncu_stalls.txt" | sort -rn | head -8
  step racecheck; timeout 150 compute-sanitizer --tool racecheck --error-exitcode 1 \
    python3 -m benchmarks.bench_ops_gpu --check-only --tiny; echo "racecheck rc=$?"
  step done
} 2>&1 | tee "$OUT/log"
