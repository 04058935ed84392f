"""Variational dequantisation (Ho et al. 2019, Flow++): learned noise inside the bins."""

import math

import tensorflow as tf
import tf_keras


@tf_keras.saving.register_keras_serializable(package="tfinvconv")
class VariationalDequantizer(tf_keras.layers.Layer):
  """q(u | x): where inside its bin each value of the binned image x lies, u in (0, 1)^D.

  A conditional flow of standard normal noise eps: a small convolutional network of x gives a
  shift m(x) and log-scale s(x) per value, then

      v = m(x) + exp(s(x)) * eps,      u = sigmoid(v),
      log q(u | x) = sum_i [log N(eps_i) - s_i(x) - log sigmoid'(v_i)],
      log sigmoid'(v) = -softplus(v) - softplus(-v).

  Trained jointly with the flow p on the variational bound of the discrete likelihood,

      log P(x) >= E_q[log p(x + u / n_bins) - D log n_bins - log q(u | x)],

  so bits/dim stays an upper bound on -log2 P(x) / D, as with uniform noise (q = 1), but q can
  put the noise where p has its mass. The last convolution starts at zero: u starts as
  sigmoid(eps), a logit-normal.
  """

  def __init__(self, channels, hidden_channels=32, **kwargs):
    super().__init__(**kwargs)
    self.channels, self.hidden_channels = int(channels), int(hidden_channels)
    conv = dict(kernel_size=3, padding="same", dtype=self.dtype_policy)
    self.net = [
        tf_keras.layers.Conv2D(hidden_channels, activation="relu", **conv),
        tf_keras.layers.Conv2D(hidden_channels, activation="relu", **conv),
        tf_keras.layers.Conv2D(2 * channels, kernel_initializer="zeros", **conv),
    ]

  def build(self, input_shape):
    shape = tf.TensorShape(input_shape)
    for layer in self.net:
      layer.build(shape)
      shape = layer.compute_output_shape(shape)
    super().build(input_shape)

  def call(self, x, eps):
    """x: binned data (the bins' lower edges, scaled); eps: standard normal noise of x's shape.
    Returns (u, log q(u | x) per example)."""
    h = x
    for layer in self.net:
      h = layer(h)
    h = tf.cast(h, x.dtype)
    shift, log_scale = h[..., :self.channels], h[..., self.channels:]
    v = shift + tf.exp(log_scale) * eps
    log_normal = -0.5 * tf.square(eps) - 0.5 * math.log(2.0 * math.pi)
    log_q = log_normal - log_scale + tf.math.softplus(v) + tf.math.softplus(-v)
    return tf.sigmoid(v), tf.reduce_sum(log_q, axis=[-3, -2, -1])

  def get_config(self):
    return dict(super().get_config(), channels=self.channels,
                hidden_channels=self.hidden_channels)
