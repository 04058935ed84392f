"""Runs the compiled op in a fresh process, where TFINVCONV_CPU_PATH (read once per process) and
the CPU (under qemu) can differ from the test's own; used by test_cpu_paths.py.

    python tests/ops/cpu_path_probe.py round-trip      # tiny; prints "path=<name> error=<e>"
    python tests/ops/cpu_path_probe.py results OUT.npz  # every case of CASES, for comparison

Kept small on purpose: under qemu every instruction is emulated.
"""

import sys

import numpy as np
import tensorflow as tf

from tfinvconv import ops

# (dtype, channels, kernel size, corner): channel counts that fill no vector width exactly and
# span several register groups (13 floats = 4 baseline vectors; 40 doubles = 10 AVX2 vectors).
CASES = [(dtype, c, k, corner) for dtype in ("float32", "float64") for c in (5, 13, 40)
         for k, corner in ((1, "top_left"), (2, "top_right"), (3, "bottom_left"),
                           (5, "bottom_right"))]


def _problem(dtype, c, k, seed, shape=(2, 19, 21)):
  rng = np.random.default_rng(seed)
  kernel = rng.normal(scale=0.3 / (k * np.sqrt(c)), size=(k, k, c, c))
  kernel[k - 1, k - 1] += np.eye(c)
  y = rng.normal(size=shape + (c,))
  g = rng.normal(size=shape + (c,))
  return (tf.constant(v, dtype) for v in (y, kernel, g))


def solve_with_gradients(dtype, c, k, corner, seed=0, shape=(2, 19, 21)):
  """x = A^{-1} y, and the gradients of sum(x * g): dy by the adjoint solve, dkernel."""
  y, kernel, g = _problem(dtype, c, k, seed, shape)
  with tf.GradientTape() as tape:
    tape.watch([y, kernel])
    x = ops.inverse_causal_conv2d(y, kernel, corner, implementation="custom_op")
    loss = tf.reduce_sum(x * g)
  dy, dkernel = tape.gradient(loss, [y, kernel])
  return {"y": y.numpy(), "kernel": kernel.numpy(), "x": x.numpy(), "dy": dy.numpy(),
          "dkernel": dkernel.numpy()}


def main(argv):
  try:
    path, error = ops.cpu_path(), ""
  except tf.errors.InvalidArgumentError as e:
    path, error = "", e.message
  if argv[1] == "round-trip":
    difference = float("nan")
    if path:
      out = solve_with_gradients("float32", 3, 3, "top_left", shape=(1, 6, 5))
      difference = np.max(np.abs(ops.causal_conv2d(out["x"], out["kernel"]).numpy() - out["y"]))
    print(f"path={path} round_trip_error={difference:.3g} error={error}")
  elif argv[1] == "results":
    arrays = {}
    for case in CASES if path else []:
      for name, value in solve_with_gradients(*case).items():
        arrays["/".join(map(str, case)) + "/" + name] = value
    np.savez(argv[2], path=path, error=error, **arrays)
  else:
    sys.exit(f"unknown mode {argv[1]!r}; expected round-trip or results")


if __name__ == "__main__":
  main(sys.argv)
