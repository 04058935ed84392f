"""Gaussian priors of the multi-scale flow: Glow's learned split prior and top prior."""

import math

import tensorflow as tf
import tf_keras


def gaussian_log_prob(z, mean, log_scale):
  """Sum over [H, W, C] of log N(z; mean, exp(log_scale)^2)."""
  log_density = -0.5 * (math.log(2 * math.pi) + 2.0 * log_scale +
                        tf.square(z - mean) * tf.exp(-2.0 * log_scale))
  return tf.reduce_sum(log_density, axis=[-3, -2, -1])


class ZeroConv2D(tf_keras.layers.Layer):
  """Glow's conv2d_zeros: a zero-initialised 3x3 convolution whose output is scaled by
  exp(3 * logs), so a prior built on it starts as a standard normal and learns quickly."""

  def __init__(self, filters, kernel_size=3, logscale_factor=3.0, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.logscale_factor = logscale_factor

  def build(self, input_shape):
    channels = int(input_shape[-1])
    k = self.kernel_size
    self.kernel = self.add_weight("kernel", [k, k, channels, self.filters], initializer="zeros")
    self.bias = self.add_weight("bias", [self.filters], initializer="zeros")
    self.logs = self.add_weight("logs", [self.filters], initializer="zeros")
    super().build(input_shape)

  def call(self, x):
    h = tf.nn.conv2d(x, self.kernel, strides=1, padding="SAME") + self.bias
    return h * tf.exp(self.logs * self.logscale_factor)


class SplitPrior(tf_keras.layers.Layer):
  """p(z_dropped | z_kept) = N(mean, exp(log_scale)^2), mean and log_scale from ZeroConv2D."""

  def __init__(self, kept_channels, dropped_channels, **kwargs):
    super().__init__(**kwargs)
    self.conv = ZeroConv2D(2 * dropped_channels, dtype=self.dtype)
    self.conv.build([None, None, None, kept_channels])

  def call(self, kept):
    h = self.conv(kept)
    return h[..., 0::2], h[..., 1::2]


class TopPrior(tf_keras.layers.Layer):
  """N(mean, exp(log_scale)^2) per channel for the last latent; learned when `learn_top`
  (Glow's learntop: a zero conv of zeros, i.e. a learned per-channel mean and scale)."""

  def __init__(self, channels, learn_top=True, **kwargs):
    super().__init__(**kwargs)
    self.mean = self.add_weight("mean", [channels], initializer="zeros", trainable=learn_top)
    self.log_scale = self.add_weight("log_scale", [channels], initializer="zeros",
                                     trainable=learn_top)

  def call(self, like):
    ones = tf.ones_like(like)
    return self.mean * ones, self.log_scale * ones
