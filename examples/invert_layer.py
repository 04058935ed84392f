"""Invert a random Inverse-Flow layer and print the reconstruction error and timings.

    .venv/bin/python examples/invert_layer.py
"""

import time

import numpy as np
import tensorflow as tf

from tfinvconv import ops


def median_ms(fn, repeats=10):
  fn()  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def main():
  rng = np.random.default_rng(0)
  batch, size, channels, k = 16, 32, 12, 3
  kernel = rng.normal(scale=0.03, size=(k, k, channels, channels)).astype(np.float32)
  kernel[k - 1, k - 1] += np.eye(channels, dtype=np.float32)  # unit-ish diagonal
  kernel = tf.constant(kernel)
  x = tf.constant(rng.normal(size=(batch, size, size, channels)).astype(np.float32))

  print(f"layer: {k}x{k} causal convolution, batch {batch}, {size}x{size}x{channels}")
  y = ops.causal_conv2d(x, kernel)
  for implementation in ("custom_op", "tf"):
    x_back = ops.inverse_causal_conv2d(y, kernel, implementation=implementation)
    error = float(tf.reduce_max(tf.abs(x_back - x)))
    ms = median_ms(lambda: ops.inverse_causal_conv2d(y, kernel, implementation=implementation))
    print(f"  inverse ({implementation:9s}): max |x - inverse(conv(x))| = {error:.2e}, "
          f"{ms:7.2f} ms")
  print(f"  forward conv             : {median_ms(lambda: ops.causal_conv2d(x, kernel)):7.2f} ms")


if __name__ == "__main__":
  main()
