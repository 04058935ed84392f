"""Op-level benchmark: forward causal conv vs its inverse (compiled op, TF path, dense solve).

    .venv/bin/python -m benchmarks.bench_ops [--quick] [--repeats N]

Every row's columns are measured side by side in one process, interleaved call by call (this
machine is noisy), as medians over repeats after warm-up; the ratios are what to read. Writes
benchmarks/results/ops_cpu.{json,md}.
"""

import argparse
import os

import numpy as np
import tensorflow as tf

from benchmarks import timing
from benchmarks import write_results
from tfinvconv import ops

DENSE_LIMIT = 12288  # largest H*W*C whose dense triangular matrix (float32, 600 MB) we build


def _dense_matrix(kernel, size, channels):
  """The map as a dense [N, N] matrix in raster order (lower triangular for top_left)."""
  n = size * size * channels
  columns = []
  for start in range(0, n, 1024):
    basis = tf.reshape(tf.eye(n, dtype=tf.float32)[start:start + 1024],
                       [-1, size, size, channels])
    columns.append(tf.reshape(ops.causal_conv2d(basis, kernel), [-1, n]))
  return tf.transpose(tf.concat(columns, axis=0))


def bench_row(batch, size, channels, k, repeats, rng):
  kernel = rng.normal(scale=0.3 / (k * np.sqrt(channels)), size=(k, k, channels, channels))
  kernel[k - 1, k - 1] += np.eye(channels)
  kernel = tf.constant(kernel, tf.float32)
  x = tf.constant(rng.normal(size=(batch, size, size, channels)), tf.float32)
  g = tf.constant(rng.normal(size=(batch, size, size, channels)), tf.float32)
  y = ops.causal_conv2d(x, kernel)

  def with_backward(fn):
    # The op's own backward pass (no model, no optimizer): what is timed is not a training
    # step, so this is no copy of Glow.train_step.
    @tf.function
    def run(inp, kern):
      with tf.GradientTape() as tape:
        tape.watch([inp, kern])
        loss = tf.reduce_sum(fn(inp, kern) * g)
      return tape.gradient(loss, [inp, kern])
    return run

  conv = lambda inp, kern: ops.causal_conv2d(inp, kern)
  custom = lambda inp, kern: ops.inverse_causal_conv2d(inp, kern, implementation="custom_op")
  tf_path = lambda inp, kern: ops.inverse_causal_conv2d(inp, kern, implementation="tf")
  cases = {
      "conv": (tf.function(conv), x),
      "inverse_custom": (tf.function(custom), y),
      "inverse_tf": (tf.function(tf_path), y),
      "conv_fwd_bwd": (with_backward(conv), x),
      "inverse_custom_fwd_bwd": (with_backward(custom), y),
      "inverse_tf_fwd_bwd": (with_backward(tf_path), y),
  }
  n = size * size * channels
  if n <= DENSE_LIMIT:
    matrix = _dense_matrix(kernel, size, channels)
    rhs = tf.transpose(tf.reshape(y, [batch, n]))
    cases["inverse_dense"] = (tf.function(
        lambda m, r: tf.linalg.triangular_solve(m, r, lower=True)), matrix, rhs)
  fns = {name: (case[0], case[1:] if len(case) > 2 else (case[1], kernel))
         for name, case in cases.items()}
  row = {"batch": batch, "size": size, "channels": channels, "k": k}
  for name, values in timing.interleaved(fns, repeats).items():
    summary = timing.summary_ms(values)
    row[name + "_ms"] = summary["median_ms"]
    row[name + "_min_ms"] = summary["min_ms"]
    row[name + "_max_ms"] = summary["max_ms"]
  row["custom_over_conv"] = row["inverse_custom_ms"] / row["conv_ms"]
  row["custom_fwd_bwd_over_conv_fwd_bwd"] = (row["inverse_custom_fwd_bwd_ms"] /
                                              row["conv_fwd_bwd_ms"])
  row["tf_over_custom"] = row["inverse_tf_ms"] / row["inverse_custom_ms"]
  row["tf_fwd_bwd_over_custom_fwd_bwd"] = (row["inverse_tf_fwd_bwd_ms"] /
                                            row["inverse_custom_fwd_bwd_ms"])
  return row


def markdown(rows, meta):
  def cell(row, key):
    return f"{row[key]:.2f}" if key in row else "—"

  lines = [f"Op benchmark on {meta['cpu']} ({meta['cores']} cores), TensorFlow "
           f"{meta['tensorflow']}, float32, k = 3, median of {meta['repeats']} (ms).", "",
           "| B | H=W | C | conv | inverse (custom) | inverse (tf) | inverse (dense) "
           "| conv+bwd | custom+bwd | tf+bwd | custom/conv | custom+bwd / conv+bwd "
           "| tf/custom | tf+bwd / custom+bwd |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['batch']} | {r['size']} | {r['channels']} | {cell(r, 'conv_ms')} "
        f"| {cell(r, 'inverse_custom_ms')} | {cell(r, 'inverse_tf_ms')} "
        f"| {cell(r, 'inverse_dense_ms')} | {cell(r, 'conv_fwd_bwd_ms')} "
        f"| {cell(r, 'inverse_custom_fwd_bwd_ms')} | {cell(r, 'inverse_tf_fwd_bwd_ms')} "
        f"| {r['custom_over_conv']:.2f}× | {r['custom_fwd_bwd_over_conv_fwd_bwd']:.2f}× "
        f"| {r['tf_over_custom']:.2f}× | {r['tf_fwd_bwd_over_custom_fwd_bwd']:.2f}× |")
  lines += ["", "Targets: custom/conv ≤ 3×, custom+bwd / conv+bwd ≤ 3×, tf/custom ≤ 10×.",
            "Dense = tf.linalg.triangular_solve on the [HWC, HWC] matrix, only where it fits "
            f"(HWC ≤ {DENSE_LIMIT})."]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="two small shapes, 3 repeats")
  parser.add_argument("--repeats", type=int, default=None)
  args = parser.parse_args(argv)
  repeats = args.repeats or (3 if args.quick else 15)
  shapes = [(16, 16, 12), (16, 16, 48)] if args.quick else [
      (16, size, channels) for size in (16, 32, 64) for channels in (12, 48)]
  rng = np.random.default_rng(0)
  meta = {"cpu": timing.cpu_name(), "cores": os.cpu_count(), "tensorflow": tf.__version__,
          "repeats": repeats}
  rows = []
  for batch, size, channels in shapes:
    rows.append(bench_row(batch, size, channels, 3, repeats, rng))
    print(f"measured B={batch} {size}x{size}x{channels}", flush=True)
  table = markdown(rows, meta)
  print(table)
  if not args.quick:
    write_results("ops_cpu", {"meta": meta, "rows": rows}, table)


if __name__ == "__main__":
  main()
