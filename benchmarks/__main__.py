"""The op and model benchmarks: `python -m benchmarks [--quick]`.

Writes benchmarks/results/{ops_cpu,models_cpu}.{json,md} (the --quick smoke run writes to
benchmarks/results/quick/ so published numbers are never overwritten by it). The other tables have
their own modules (quality, bench_mixed, bench_portable, bench_ops_gpu); `python -m
benchmarks.readme` then rewrites the numbers README.md and docs/ quote (`make bench` runs both).
"""

import argparse
import os
import platform

import tensorflow as tf

from benchmarks import RESULTS
from benchmarks import bench_models
from benchmarks import bench_ops
from benchmarks import models_table
from benchmarks import timing


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="smoke run in under two minutes")
  parser.add_argument("--depth", type=int, default=8,
                      help="flow steps per level (the slides' architecture reads as 32; 8 keeps "
                           "the full run near 25 minutes on 2 cores)")
  parser.add_argument("--hidden", type=int, default=64, help="coupling network width")
  parser.add_argument("--memory-only", action="store_true",
                      help="re-measure only the peak-memory column of the saved size table")
  args = parser.parse_args()
  if args.memory_only:
    return models_table.remeasure_memory()
  if args.quick:
    sizes, kernels, depth, hidden, repeats, memory = [16], [2, 3], 2, 16, 2, False
  else:
    sizes, kernels, repeats, memory = [16, 32, 64, 128, 256], [2, 3, 5, 7, 9, 11], 5, True
    depth, hidden = args.depth, args.hidden
  out = os.path.join(RESULTS, "quick") if args.quick else RESULTS
  os.makedirs(out, exist_ok=True)
  meta = {"cpu": timing.cpu_name(), "cores": os.cpu_count(),
          "tensorflow": tf.__version__, "python": platform.python_version()}

  bench_ops.main(["--quick"] if args.quick else [])  # prints; writes ops_cpu.* unless quick

  size_rows = bench_models.size_table(sizes, depth, hidden, repeats, memory=memory)
  kernel_rows = bench_models.kernel_table(kernels, 32 if not args.quick else 16, depth, hidden,
                                          repeats)
  print(models_table.write(out, meta, depth, hidden, repeats, size_rows, kernel_rows))


if __name__ == "__main__":
  main()
