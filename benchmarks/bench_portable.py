"""The portable op library against a -march=native one: the same solves, timed side by side.

    .venv/bin/python -m benchmarks.bench_portable \\
        --library native=build/native/tfinvconv/ops/_inverse_conv_ops.so \\
        --library portable=tfinvconv/ops/_inverse_conv_ops.so \\
        --library portable:baseline=tfinvconv/ops/_inverse_conv_ops.so   # forced CPU path

Two libraries registering the same op cannot share a process, so each runs in a worker process
of its own (TFINVCONV_CPU_PATH set after the colon); the parent asks the workers for one timing
at a time, in turn, shape by shape and round by round, so load on this shared machine hits every
library alike. Medians over the rounds; the ratios to the first library are what to read.
Writes benchmarks/results/ops_cpu_portable.{json,md} (not with --quick).
"""

import argparse
import os
import subprocess
import sys

import numpy as np

from benchmarks import write_results

SHAPES = [(16, size, channels, "float32") for size in (16, 32, 64) for channels in (12, 48)] + [
    (16, 32, 12, "float64"), (16, 32, 48, "float64")]
QUICK_SHAPES = [(16, 16, 12, "float32"), (16, 16, 48, "float64")]


def worker(library):
  """Reads `batch size channels dtype adjoint` lines, answers seconds per solve (best of 3
  calls, so one interruption does not count) and, at start, the CPU path."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  lib = tf.load_op_library(library)
  path = lib.tf_inv_conv_cpu_path().numpy().decode() if hasattr(lib, "tf_inv_conv_cpu_path") \
      else "native (before dispatch)"
  print(path, flush=True)
  rng = np.random.default_rng(0)
  for line in iter(sys.stdin.readline, ""):
    batch, size, channels, dtype, adjoint = line.split()
    batch, size, channels = int(batch), int(size), int(channels)
    kernel = rng.normal(scale=0.1 / np.sqrt(channels), size=(3, 3, channels, channels))
    kernel[2, 2] += np.eye(channels)
    kernel = tf.constant(kernel, dtype)
    rhs = tf.constant(rng.normal(size=(batch, size, size, channels)), dtype)
    solve = lambda: lib.tf_inv_conv_inverse_causal_conv2d(rhs, kernel, adjoint=adjoint == "1")
    solve().numpy()  # warm-up
    times = []
    for _ in range(3):
      start = tf.timestamp()
      solve().numpy()
      times.append(float(tf.timestamp() - start))
    print(min(times), flush=True)


def _start(spec):
  name, library = spec.split("=", 1)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("TFINVCONV_CPU_PATH", None)
  if ":" in name:
    env["TFINVCONV_CPU_PATH"] = name.split(":", 1)[1]
  process = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_portable", "--worker",
                              os.path.abspath(library)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
  return name, process, process.stdout.readline().strip()


def markdown(names, paths, rows, meta):
  first = names[0]
  lines = [f"Op library builds side by side on {meta['cpu']} ({meta['cores']} cores), TensorFlow "
           f"{meta['tensorflow']}, k = 3, solve (adjoint=False) and adjoint solve, each the "
           f"median over {meta['rounds']} interleaved rounds of the best of 3 calls (ms).",
           "", "Libraries: " + "; ".join(f"`{n}` = {paths[n]}" for n in names), "",
           "| B | H=W | C | dtype | solve | " + " | ".join(names) + " | " +
           " | ".join(f"{n} / {first}" for n in names[1:]) + " |",
           "|---" * (5 + 2 * len(names) - 1) + "|"]
  for r in rows:
    lines.append(f"| {r['batch']} | {r['size']} | {r['channels']} | {r['dtype']} | "
                 f"{'adjoint' if r['adjoint'] else 'solve'} | " +
                 " | ".join(f"{r[n + '_ms']:.2f}" for n in names) + " | " +
                 " | ".join(f"{r[n + '_ms'] / r[first + '_ms']:.2f}×" for n in names[1:]) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--library", action="append", default=[],
                      help="NAME[:CPU_PATH]=PATH of an op library; the first is the reference")
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return worker(args.worker)
  if len(args.library) < 2:
    parser.error("give at least two --library NAME=PATH")
  for spec in args.library:
    if "=" not in spec or not os.path.exists(spec.split("=", 1)[1]):
      parser.error(f"--library {spec}: expected NAME=PATH of an existing library")
  from benchmarks import timing  # pylint: disable=g-import-not-at-top  # TensorFlow: the parent only
  workers = [_start(spec) for spec in args.library]
  names = [name for name, _, _ in workers]
  paths = {name: path for name, _, path in workers}
  rounds = 3 if args.quick else args.rounds
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  meta = {"cpu": timing.cpu_name(), "cores": os.cpu_count(), "tensorflow": tf.__version__,
          "rounds": rounds, "paths": paths}
  rows = []
  for batch, size, channels, dtype in QUICK_SHAPES if args.quick else SHAPES:
    for adjoint in (0, 1):
      times = {name: [] for name in names}
      for _ in range(rounds):
        for name, process, _ in workers:
          process.stdin.write(f"{batch} {size} {channels} {dtype} {adjoint}\n")
          process.stdin.flush()
          times[name].append(float(process.stdout.readline()))
      row = {"batch": batch, "size": size, "channels": channels, "dtype": dtype,
             "adjoint": bool(adjoint)}
      row.update({name + "_ms": 1e3 * float(np.median(t)) for name, t in times.items()})
      rows.append(row)
      print(f"measured B={batch} {size}x{size}x{channels} {dtype} adjoint={adjoint}", flush=True)
  for _, process, _ in workers:
    process.stdin.close()
    process.wait()
  table = markdown(names, paths, rows, meta)
  print(table)
  if not args.quick:
    write_results("ops_cpu_portable", {"meta": meta, "rows": rows}, table)


if __name__ == "__main__":
  main()
