"""What the op accepts and refuses: an empty batch gives an empty result; bad shapes, dtypes,
corners and implementation names, and a singular kernel, are errors that name the problem, from
both implementations and from the C++ kernel called directly."""

import numpy as np
import pytest
import tensorflow as tf

from tests import reference as ref
from tfinvconv import ops
from tfinvconv.ops import _loader

IMPLEMENTATIONS = ("custom_op", "tf")


def _problem(rng, channels=3, k=3, shape=(2, 5, 6)):
  kernel = ref.random_kernel(rng, k, channels, unit_diagonal=False).astype(np.float32)
  y = rng.normal(size=shape + (channels,)).astype(np.float32)
  return y, kernel


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_empty_batch_returns_empty(implementation):
  kernel = ref.random_kernel(np.random.default_rng(4), 3, 2, True)
  y = tf.zeros([0, 4, 5, 2], tf.float64)
  with tf.GradientTape() as tape:
    tape.watch(y)
    x = ops.inverse_causal_conv2d(y, kernel, implementation=implementation)
    loss = tf.reduce_sum(x)
  assert x.shape == (0, 4, 5, 2)
  assert tape.gradient(loss, y).shape == (0, 4, 5, 2)


BAD_INPUTS = [
    # (description, y shape, kernel shape, error type, message)
    ("rank 3 input", (4, 5, 3), (3, 3, 3, 3), ValueError, "must be rank 4"),
    ("rank 5 input", (1, 1, 4, 5, 3), (3, 3, 3, 3), ValueError, "must be rank 4"),
    ("rank 3 kernel", (1, 4, 5, 3), (3, 3, 3), ValueError, "kernel must be rank 4"),
    ("channel mismatch", (1, 4, 5, 4), (3, 3, 3, 3), ValueError, "channel mismatch"),
    ("non-square kernel", (1, 4, 5, 3), (3, 2, 3, 3), ValueError, "must be square"),
    ("kernel not C x C", (1, 4, 5, 3), (3, 3, 3, 2), ValueError, "same input and output"),
    ("kernel too large", (1, 4, 5, 1), (33, 33, 1, 1), ValueError, "outside the allowed range"),
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_shapes_name_the_problem(case, implementation):
  _, y_shape, k_shape, error, message = case
  with pytest.raises(error, match=message):
    ops.inverse_causal_conv2d(np.ones(y_shape, np.float32), np.ones(k_shape, np.float32),
                              implementation=implementation)
  if k_shape[0] == k_shape[1] and len(k_shape) == 4 and len(y_shape) == 4:
    with pytest.raises(error, match=message):
      ops.causal_conv2d(np.ones(y_shape, np.float32), np.ones(k_shape, np.float32))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bad_dtypes_corner_and_implementation(implementation):
  y, kernel = _problem(np.random.default_rng(5))
  with pytest.raises(TypeError, match="dtype mismatch"):
    ops.inverse_causal_conv2d(y, kernel.astype(np.float64), implementation=implementation)
  with pytest.raises(TypeError, match="expected float32 or float64"):
    ops.inverse_causal_conv2d(y.astype(np.int32), kernel.astype(np.int32),
                              implementation=implementation)
  with pytest.raises(ValueError, match="unknown corner 'middle'"):
    ops.inverse_causal_conv2d(y, kernel, corner="middle", implementation=implementation)
  with pytest.raises(ValueError, match="unknown implementation 'cuda'"):
    ops.inverse_causal_conv2d(y, kernel, implementation="cuda")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad_value", (0.0, np.nan))
def test_singular_kernel_is_an_error(implementation, bad_value):
  y, kernel = _problem(np.random.default_rng(6))
  kernel[2, 2, 1, 1] = bad_value
  # Both implementations say the same sentence, naming the channel.
  sentence = (r"singular kernel: the same-pixel diagonal entry for channel 1 is zero \(or NaN\), "
              r"so the causal convolution has no inverse")
  with pytest.raises(tf.errors.InvalidArgumentError, match=sentence) as eager:
    ops.inverse_causal_conv2d(y, kernel, implementation=implementation)
  assert "Summarized data" not in eager.value.message and "Expected" not in eager.value.message
  # Inside a graph the same check runs at execution time.
  solve = tf.function(lambda y: ops.inverse_causal_conv2d(y, kernel, implementation=implementation))
  with pytest.raises(tf.errors.InvalidArgumentError, match=sentence):
    solve(tf.constant(y))


def test_cpp_kernel_validates_its_own_inputs():
  """The raw op, called without the Python checks, still refuses bad input with clear errors."""
  library, _ = _loader.load_library()
  raw = library.tf_inv_conv_inverse_causal_conv2d
  good_y, good_k = _problem(np.random.default_rng(7))
  cases = [
      (good_y[0], good_k, "rank 4"),
      (good_y, good_k[0], "rank 4"),
      (good_y, good_k[:, :2], "square"),
      (good_y[..., :2], good_k, "channel mismatch|Dimensions must be equal"),
      (np.ones((1, 3, 3, 1), np.float32), np.ones((33, 33, 1, 1), np.float32),
       "larger than the maximum allowed \\(32\\)"),
  ]
  for y, kernel, message in cases:
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
      raw(y, kernel)
  singular = good_k.copy()
  singular[2, 2, 0, 0] = 0
  with pytest.raises(tf.errors.InvalidArgumentError, match="singular kernel.*channel 0"):
    raw(good_y, singular)
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)):
    raw(tf.constant(good_y), tf.constant(good_k, tf.float64))
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)):
    raw(good_y, good_k, corner="middle")
