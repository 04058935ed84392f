#!/usr/bin/env bash
# One lease of a GPU machine (device tool; PyTorch, no TensorFlow) for the GPU solve, as one
# prepared script under five minutes: build -> compute-sanitizer (memcheck, racecheck on small
# shapes) -> device-time table vs cuDNN (bench_ops_gpu) -> the papers' own kernels side by side
# (bench_gpu_peers, from peers/ when it was carried) -> ncu of the Glow-shape calls; an earlier
# build of the core at $BASELINE, when there is one, is timed beside this one. Each step
# has its own time limit, so one slow tool cannot eat the lease. Everything goes to $OUT.
OUT=${OUT:-build/gpu_session}
PEERS=${PEERS:-peers}
BASELINE=${BASELINE:-build/gpu_bench_baseline/libtfinvconv_core.so}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { echo "== $(date +%T) $*"; }
# One call of each kind at the three Glow shapes, for ncu (after cuDNN's algorithm search).
glow_calls='import torch
from benchmarks.bench_ops_gpu import *
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True
core, rng = Core(), np.random.default_rng(0)
for b, s, ch, k in GLOW:
  x = torch.randn(b, s, s, ch, device="cuda")
  kernel = torch.tensor(random_kernel(rng, k, ch), dtype=torch.float32, device="cuda")
  solve, _ = core.solver(x, kernel)
  conv = conv_calls(x, kernel)["conv"]  # channels_last
  conv(); torch.cuda.synchronize()
  torch.cuda.cudart().cudaProfilerStart()
  solve(x, torch.empty_like(x)); conv()
  torch.cuda.synchronize()
  torch.cuda.cudart().cudaProfilerStop()'
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
  python3 -c 'import torch; print(torch.__version__, torch.backends.cudnn.version())'
  step build
  if [ -d "$PEERS" ]; then  # the peers' extensions compile while the sanitizers run
    timeout 150 python3 -m benchmarks.bench_gpu_peers --peer-dir "$PEERS" --build-only \
      > /tmp/peers_build.log 2>&1 &
  fi
  make -s PYTHON=python3 build/gpu_bench/libtfinvconv_core.so || exit 1
  step memcheck; timeout 45 compute-sanitizer --tool memcheck --error-exitcode 1 \
    python3 -m benchmarks.bench_ops_gpu --check-only --small; echo "memcheck rc=$?"
  step racecheck; timeout 90 compute-sanitizer --tool racecheck --error-exitcode 1 \
    python3 -m benchmarks.bench_ops_gpu --check-only --tiny; echo "racecheck rc=$?"
  step wait for the peers build; wait; tail -3 /tmp/peers_build.log 2>/dev/null
  step bench; timeout 120 python3 -m benchmarks.bench_ops_gpu; echo "bench rc=$?"
  cp benchmarks/results/ops_gpu.* "$OUT"/
  if [ -f "$BASELINE" ]; then  # an earlier build of the core, timed on the same warm machine
    step baseline; timeout 30 python3 -m benchmarks.bench_ops_gpu --only Glow --no-check \
      --library "$BASELINE" --results ops_gpu_baseline; echo "baseline rc=$?"
    cp benchmarks/results/ops_gpu_baseline.md "$OUT"/
  fi
  if [ -d "$PEERS" ]; then
    step peers; timeout 120 python3 -m benchmarks.bench_gpu_peers --peer-dir "$PEERS"; echo "peers rc=$?"
    cp benchmarks/results/gpu_peers.* "$OUT"/ 2>/dev/null
  fi
  step ncu; timeout 45 ncu --clock-control none --profile-from-start off \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section InstructionStats python3 -c "$glow_calls" > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$?"
  grep -E "^  [A-Za-z_].*\(|Duration|Executed Ipc A|Issue Slots Busy|Warp Cycles Per Issued" \
    "$OUT/ncu.txt" | cut -c1-150
  step ncu stalls; timeout 30 ncu --clock-control none -k regex:SolveKernel -c 1 \
    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    python3 -c "$glow_calls" > "$OUT/ncu_stalls.txt" 2>&1; echo "ncu stalls rc=$?"
  awk '/stalled/ {print $NF, $1}' "$OUT/ncu_stalls.txt" | sort -rn | head -8
  step done
} 2>&1 | tee "$OUT/log"
