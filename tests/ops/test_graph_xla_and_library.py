"""Where the op runs: inside tf.function with unknown batch and image sizes, under XLA (which
takes the pure-TensorFlow path, "auto" saying so once), and with or without its compiled
library: built for this TensorFlow and loaded, refused before loading when built for another,
and "auto" falling back to the TensorFlow solve with one warning when it is missing."""

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
