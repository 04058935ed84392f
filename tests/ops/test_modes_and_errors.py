"""Graph mode, XLA, the implementation switch, and every bad input."""

import importlib
import warnings

import numpy as np
import pytest
import tensorflow as tf

from tests import reference as ref
from tfinvconv import ops
from tfinvconv.ops import _loader
from tfinvconv.ops import inverse_causal_conv

IMPLEMENTATIONS = ("custom_op", "tf")


def _problem(rng, channels=3, k=3, shape=(2, 5, 6)):
  kernel = ref.random_kernel(rng, k, channels, unit_diagonal=False).astype(np.float32)
  y = rng.normal(size=shape + (channels,)).astype(np.float32)
  return y, kernel


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tf_function_with_unknown_batch_size(implementation):
  rng = np.random.default_rng(0)
  y, kernel = _problem(rng)
  kernel = tf.constant(kernel)

  @tf.function(input_signature=[tf.TensorSpec([None, 5, 6, 3], tf.float32)])
  def solve_and_grad(y):
    with tf.GradientTape() as tape:
      tape.watch(y)
      x = ops.inverse_causal_conv2d(y, kernel, "top_right", implementation)
      loss = tf.reduce_sum(x ** 2)
    return x, tape.gradient(loss, y)

  for batch in (1, 4):
    yb = np.concatenate([y] * batch)[:batch + 1]
    x, dy = solve_and_grad(tf.constant(yb))
    assert x.shape == yb.shape
    with tf.GradientTape() as tape:
      y_eager = tf.constant(yb)
      tape.watch(y_eager)
      x_eager = ops.inverse_causal_conv2d(y_eager, kernel, "top_right", implementation)
      loss = tf.reduce_sum(x_eager ** 2)
    np.testing.assert_allclose(x.numpy(), x_eager.numpy(), atol=1e-5)
    np.testing.assert_allclose(dy.numpy(), tape.gradient(loss, y_eager), atol=1e-4)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tf_function_with_unknown_image_size(implementation):
  rng = np.random.default_rng(1)
  _, kernel = _problem(rng)
  solve = tf.function(lambda y: ops.inverse_causal_conv2d(y, kernel, "bottom_left", implementation),
                      input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
  for shape in ((1, 4, 9, 3), (3, 7, 2, 3)):
    y = rng.normal(size=shape).astype(np.float32)
    x = solve(tf.constant(y)).numpy()
    np.testing.assert_allclose(ops.causal_conv2d(x, kernel, "bottom_left").numpy(), y, atol=1e-4)


@pytest.mark.parametrize("implementation", ("tf", "auto"))
def test_jit_compile_uses_the_tf_path(implementation, monkeypatch):
  monkeypatch.setattr(_loader, "_warned", set())
  rng = np.random.default_rng(2)
  y, kernel = _problem(rng, channels=4, k=2)

  @tf.function(jit_compile=True)
  def solve_and_grads(y, kernel):
    with tf.GradientTape() as tape:
      tape.watch([y, kernel])
      x = ops.inverse_causal_conv2d(y, kernel, "bottom_right", implementation)
      loss = tf.reduce_sum(tf.sin(x))
    return (x,) + tuple(tape.gradient(loss, [y, kernel]))

  with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter("always")
    got = solve_and_grads(tf.constant(y), tf.constant(kernel))
  # "auto" says once why it took the TF path (the compiled op has no XLA kernel); "tf" is silent.
  fallbacks = [w for w in said if "no XLA kernel" in str(w.message)]
  assert len(fallbacks) == (implementation == "auto"), [str(w.message) for w in said]
  y_t, k_t = tf.constant(y), tf.constant(kernel)
  with tf.GradientTape() as tape:
    tape.watch([y_t, k_t])
    x = ops.inverse_causal_conv2d(y_t, k_t, "bottom_right", "custom_op")
    loss = tf.reduce_sum(tf.sin(x))
  want = (x,) + tuple(tape.gradient(loss, [y_t, k_t]))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-4)


def test_auto_falls_back_with_one_warning(monkeypatch):
  rng = np.random.default_rng(3)
  y, kernel = _problem(rng)
  monkeypatch.setattr(_loader, "load_library", lambda: (None, "the library is missing (test)"))
  monkeypatch.setattr(_loader, "_warned", set())
  with pytest.warns(RuntimeWarning, match="pure-TensorFlow solve because the library is missing"):
    x = ops.inverse_causal_conv2d(y, kernel)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ops.inverse_causal_conv2d(y, kernel)  # no second warning
  np.testing.assert_allclose(ops.causal_conv2d(x, kernel).numpy(), y, atol=1e-4)
  with pytest.raises(RuntimeError, match="compiled op is unavailable: the library is missing"):
    ops.inverse_causal_conv2d(y, kernel, implementation="custom_op")


def test_compiled_library_is_built_and_loaded():
  library, reason = _loader.load_library()
  assert library is not None, reason


def test_the_build_records_its_tensorflow_version():
  with open(_loader.VERSION_FILE) as f:
    assert f.read().strip() == tf.__version__
  assert _loader.version_mismatch() is None


def test_a_library_built_for_another_tensorflow_is_refused_before_loading(tmp_path, monkeypatch):
  library = tmp_path / "_inverse_conv_ops.so"
  library.write_bytes(b"not loaded")
  (tmp_path / "_inverse_conv_ops.tf_version").write_text("2.0.0\n")
  monkeypatch.setattr(_loader, "LIBRARY_FILE", str(library))
  monkeypatch.setattr(_loader, "VERSION_FILE", str(tmp_path / "_inverse_conv_ops.tf_version"))
  for name, value in (("_tried", False), ("_library", None), ("_load_error", None)):
    monkeypatch.setattr(_loader, name, value)
  monkeypatch.setattr(tf, "load_op_library", lambda path: pytest.fail("must not be loaded"))
  library_object, reason = _loader.load_library()
  assert library_object is None
  assert f"built against TensorFlow 2.0.0, but TensorFlow {tf.__version__} is installed" in reason
  assert "pip install --no-build-isolation -e ." in reason
  # Importing the package says so at once (not only at the first solve).
  monkeypatch.setattr(_loader, "_warned", set())
  with pytest.warns(RuntimeWarning, match="built against TensorFlow 2.0.0"):
    importlib.reload(ops)
  # ... and only once: the first solve falls back without saying it again.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    y, kernel = _problem(np.random.default_rng(8))
    ops.inverse_causal_conv2d(y, kernel)


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
