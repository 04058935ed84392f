"""inverse_causal_conv2d / causal_conv2d against dense float64 linear algebra.

The dense matrix A of the map is built by probing tests/reference.py (NumPy, written from the
math) with basis images; inverse, forward and gradients are compared with np.linalg on it, and the
kernel gradient with central finite differences of the dense solve.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tests import reference as ref
from tfinvconv import ops

IMPLEMENTATIONS = ("custom_op", "tf")
SIZES = list(itertools.product((1, 2, 3, 5, 8, 12), (2, 3, 4, 5, 7)))  # channels, k
CASES = [(channels, k, corner) for channels, k in SIZES for corner in ref.CORNERS]


def _quick_corner(channels, k):
  """The corner at which `make test-quick` runs (channels, k): the corners taken in turn."""
  return ref.CORNERS[SIZES.index((channels, k)) % len(ref.CORNERS)]


def _quick_or_slow(channels, k, corner):
  """`make test-quick` runs every (channels, k) at one corner; `make test` every case."""
  quick = corner == _quick_corner(channels, k)
  return pytest.param(channels, k, corner, marks=() if quick else pytest.mark.slow)


def _dense_solve(a, rhs):
  """Solves a x = rhs for every image of a batch."""
  flat = rhs.reshape(rhs.shape[0], -1).T
  return np.linalg.solve(a, flat).T.reshape(rhs.shape)


def _loss_and_grads(y, kernel, g, implementation):
  y, kernel = tf.constant(y), tf.constant(kernel)
  with tf.GradientTape() as tape:
    tape.watch([y, kernel])
    x = ops.inverse_causal_conv2d(y, kernel, corner=_loss_and_grads.corner,
                                  implementation=implementation)
    loss = tf.reduce_sum(x * g)
  dy, dk = tape.gradient(loss, [y, kernel])
  return x.numpy(), dy.numpy(), dk.numpy()


@pytest.mark.parametrize("channels,k,corner", [_quick_or_slow(*case) for case in CASES])
def test_matches_dense_linear_algebra(channels, k, corner):
  index = CASES.index((channels, k, corner))
  rng = np.random.default_rng(index)
  batch = 1 if index % 2 else 3
  height, width = k + 1 + index % 3, k + 3 + index % 2  # non-square, larger than the kernel
  kernel = ref.random_kernel(rng, k, channels, unit_diagonal=(index // 2) % 2 == 0)
  image = (height, width, channels)
  y = rng.normal(size=(batch,) + image)
  g = rng.normal(size=(batch,) + image)
  a = ref.dense_matrix(lambda x: ref.causal_conv(x, kernel, corner), image)

  # Forward: the TF conv equals the reference definition.
  np.testing.assert_allclose(ops.causal_conv2d(y, kernel, corner).numpy(),
                             ref.causal_conv(y, kernel, corner), atol=1e-12)

  want_x = _dense_solve(a, y)
  want_dy = _dense_solve(a.T, g)  # A^{-T} g
  directions = [rng.normal(size=kernel.shape) for _ in range(2)]
  a_directions = [ref.dense_matrix(lambda x, v=v: ref.causal_conv(x, v, corner), image)
                  for v in directions]

  def dense_loss(a_matrix):
    return float(np.sum(g * _dense_solve(a_matrix, y)))

  eps = 1e-6
  want_directional = [(dense_loss(a + eps * av) - dense_loss(a - eps * av)) / (2 * eps)
                      for av in a_directions]
  scale = max(1.0, np.abs(want_x).max())

  _loss_and_grads.corner = corner
  results = {}
  # The pure-TF solve (eager, about half of this test's time) at every size at one corner and
  # at every corner at a quarter of the sizes; the op at every case.
  tested = IMPLEMENTATIONS if corner == _quick_corner(channels, k) else ("custom_op",)
  for implementation in tested:
    x, dy, dk = _loss_and_grads(y, kernel, g, implementation)
    results[implementation] = (x, dy, dk)
    np.testing.assert_allclose(x, want_x, atol=1e-9 * scale, err_msg=implementation)
    np.testing.assert_allclose(dy, want_dy, atol=1e-9 * max(1.0, np.abs(want_dy).max()),
                               err_msg=implementation)
    # Masked same-pixel entries (input > output channel) get exactly zero gradient.
    assert np.all(np.tril(dk[k - 1, k - 1], -1) == 0), implementation
    for v, want in zip(directions, want_directional):
      got = float(np.sum(dk * v))
      assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (implementation, got, want)
  if "tf" in results:
    for got, want in zip(results["custom_op"], results["tf"]):
      np.testing.assert_allclose(got, want, atol=1e-10 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("corner", ref.CORNERS)
def test_adjoint_gradient_gives_second_derivatives(implementation, corner):
  """d/dK <h, dL/dy> where dL/dy = A^{-T} g: checks the gradient of the adjoint solve."""
  rng = np.random.default_rng(7)
  k, channels, image = 3, 3, (4, 5, 3)
  kernel = ref.random_kernel(rng, k, channels, unit_diagonal=False)
  y, g, h = (rng.normal(size=(2,) + image) for _ in range(3))
  kernel_t = tf.constant(kernel)
  with tf.GradientTape() as outer:
    outer.watch(kernel_t)
    with tf.GradientTape() as inner:
      y_t = tf.constant(y)
      inner.watch(y_t)
      x = ops.inverse_causal_conv2d(y_t, kernel_t, corner, implementation=implementation)
      loss = tf.reduce_sum(x * g)
    dy = inner.gradient(loss, y_t)
    second = tf.reduce_sum(dy * h)
  dk = outer.gradient(second, kernel_t).numpy()

  a = ref.dense_matrix(lambda z: ref.causal_conv(z, kernel, corner), image)
  v = rng.normal(size=kernel.shape)
  av = ref.dense_matrix(lambda z: ref.causal_conv(z, v, corner), image)
  eps = 1e-6

  def dense(m):
    return float(np.sum(h * _dense_solve(m.T, g)))

  want = (dense(a + eps * av) - dense(a - eps * av)) / (2 * eps)
  assert abs(float(np.sum(dk * v)) - want) <= 1e-5 * max(1.0, abs(want))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_float32_round_trip_and_agreement_with_float64(implementation):
  rng = np.random.default_rng(3)
  k, channels = 3, 48
  kernel = rng.normal(scale=0.02, size=(k, k, channels, channels))
  kernel[k - 1, k - 1] += np.diag(rng.uniform(0.8, 1.2, channels))
  y = rng.normal(size=(2, 16, 12, channels))
  x32 = ops.inverse_causal_conv2d(y.astype(np.float32), kernel.astype(np.float32),
                                  "bottom_left", implementation)
  x64 = ops.inverse_causal_conv2d(y, kernel, "bottom_left", implementation)
  assert x32.dtype == tf.float32
  np.testing.assert_allclose(x32.numpy(), x64.numpy(), atol=1e-4)
  back = ops.causal_conv2d(x32, kernel.astype(np.float32), "bottom_left")
  np.testing.assert_allclose(back.numpy(), y, atol=1e-4)


def test_kernel_size_one_is_a_triangular_channel_solve():
  rng = np.random.default_rng(5)
  kernel = ref.random_kernel(rng, 1, 4, unit_diagonal=False)
  y = rng.normal(size=(3, 2, 3, 4))
  want = y @ np.linalg.inv(np.triu(kernel[0, 0]))
  for implementation in IMPLEMENTATIONS:
    got = ops.inverse_causal_conv2d(y, kernel, implementation=implementation).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("k,channels", [(3, 5), (20, 2)])
def test_large_image_uses_tiles_and_matches_tf_path(k, channels):
  """Batch 1 and a 40x37 image exercise the CPU kernel's tiled wavefront: 16-pixel tiles for
  k = 3, (k-1)-pixel tiles (the smallest that keeps dependencies on earlier diagonals) for k = 20,
  with partial tiles at the right and bottom."""
  rng = np.random.default_rng(11)
  kernel = rng.normal(scale=0.05 / k, size=(k, k, channels, channels))
  kernel[k - 1, k - 1] += np.eye(channels)
  y = rng.normal(size=(1, 40, 37, channels))
  for corner in ref.CORNERS:
    x = ops.inverse_causal_conv2d(y, kernel, corner, implementation="custom_op")
    np.testing.assert_allclose(ops.causal_conv2d(x, kernel, corner).numpy(), y, atol=1e-10)
    np.testing.assert_allclose(
        x.numpy(), ops.inverse_causal_conv2d(y, kernel, corner, implementation="tf").numpy(),
        atol=1e-10)
