"""Shared bijector checks. TFP's own `bijector_test_util` is not in the tensorflow-probability
pip wheel, so this is our implementation of the same contract: both directions finite, each the
other's inverse, and the two log-det-Jacobians finite and opposite at matching points."""

import numpy as np
import tensorflow as tf


def assert_bijective_and_finite(bijector, x, y, event_ndims, atol=1e-8, rtol=1e-6):
  """x: points in the forward domain (latent), y: points in the inverse domain (data)."""
  x, y = tf.constant(x), tf.constant(y)
  f_x = bijector.forward(tf.identity(x))
  g_y = bijector.inverse(tf.identity(y))
  for name, value in (("forward(x)", f_x), ("inverse(y)", g_y)):
    assert np.all(np.isfinite(value.numpy())), f"{name} is not finite"
  np.testing.assert_allclose(bijector.inverse(tf.identity(f_x)).numpy(), x.numpy(), atol=atol,
                             rtol=rtol, err_msg="inverse(forward(x)) != x")
  np.testing.assert_allclose(bijector.forward(tf.identity(g_y)).numpy(), y.numpy(), atol=atol,
                             rtol=rtol, err_msg="forward(inverse(y)) != y")
  fldj_x = bijector.forward_log_det_jacobian(tf.identity(x), event_ndims=event_ndims).numpy()
  ildj_fx = bijector.inverse_log_det_jacobian(tf.identity(f_x), event_ndims=event_ndims).numpy()
  ildj_y = bijector.inverse_log_det_jacobian(tf.identity(y), event_ndims=event_ndims).numpy()
  fldj_gy = bijector.forward_log_det_jacobian(tf.identity(g_y), event_ndims=event_ndims).numpy()
  for name, value in (("fldj(x)", fldj_x), ("ildj(y)", ildj_y)):
    assert np.all(np.isfinite(value)), f"{name} is not finite"
  np.testing.assert_allclose(fldj_x, -ildj_fx, atol=atol, rtol=rtol,
                             err_msg="fldj(x) != -ildj(forward(x))")
  np.testing.assert_allclose(ildj_y, -fldj_gy, atol=atol, rtol=rtol,
                             err_msg="ildj(y) != -fldj(inverse(y))")
