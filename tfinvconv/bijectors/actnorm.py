"""ActNorm: Glow's activation normalisation with data-dependent initialisation."""

import tensorflow as tf

from tfinvconv.bijectors import image_bijector

_EPSILON = 1e-6


class ActNorm(image_bijector.ImageBijector):
  """Glow's per-channel affine normalisation (Kingma & Dhariwal, 2018).

  In the data -> latent direction (`inverse`):

      y = (x + bias) * exp(log_scale),   log |det dy/dx| = H * W * sum_c log_scale_c

  and `forward` (sampling) is x = y * exp(-log_scale) - bias. The exp keeps every scale
  positive, so the map stays invertible whatever the optimizer does.

  Data-dependent initialisation: on the first data -> latent call (or an explicit
  `initialize(x)`), bias = -mean(x) and log_scale = -log(std(x) + 1e-6) per channel, so the
  output of the first batch has zero mean and unit variance; the non-trainable `initialized`
  variable records it (and is saved in checkpoints, so loading weights never re-initialises).
  Before initialisation the layer is the identity.

  Under a tf.distribute strategy the automatic initialisation is off inside replicas: call
  `initialize` (or `assign_statistics`) in cross-replica context before training.
  Distributed training: every replica calls `initial_statistics(x)` on its own batch, the
  (mean, mean of squares) pairs are averaged across replicas (e.g. `hvd.allreduce`), and each
  replica calls `assign_statistics(mean, mean_square)`: all start from the same values.
  """

  def __init__(self, num_channels, dtype=tf.float32, validate_args=False, name="actnorm"):
    parameters = dict(locals())
    with tf.name_scope(name) as name:
      super().__init__(num_channels, dtype, validate_args, name, parameters)
      self.bias = tf.Variable(tf.zeros([num_channels], self.dtype), name="bias")
      self.log_scale = tf.Variable(tf.zeros([num_channels], self.dtype), name="log_scale")
      self.initialized = tf.Variable(False, trainable=False, name="initialized")

  def initial_statistics(self, x):
    """Per-channel (mean, mean of squares) of x, in float64 (the variance is their difference,
    which would cancel badly in float32): average these across workers, then assign."""
    x = tf.convert_to_tensor(self._checked(x, "input"), self.dtype)
    flat = tf.cast(tf.reshape(x, [-1, self._num_channels]), tf.float64)
    count = tf.shape(flat)[0]
    if tf.get_static_value(count) == 0:
      raise ValueError("ActNorm cannot initialise from an empty batch")
    with tf.control_dependencies([tf.debugging.assert_positive(
        count, message="ActNorm cannot initialise from an empty batch")]):
      return tf.reduce_mean(flat, axis=0), tf.reduce_mean(tf.square(flat), axis=0)

  def assign_statistics(self, mean, mean_square):
    """Sets bias and log_scale so that data with these statistics comes out standardised."""
    mean, mean_square = tf.cast(mean, tf.float64), tf.cast(mean_square, tf.float64)
    variance = tf.maximum(mean_square - tf.square(mean), 0.0)
    log_scale = -tf.math.log(tf.sqrt(variance) + _EPSILON)
    return tf.group(self.bias.assign(tf.cast(-mean, self.dtype)),
                    self.log_scale.assign(tf.cast(log_scale, self.dtype)),
                    self.initialized.assign(True))

  def initialize(self, x):
    """Data-dependent initialisation from the batch x (always, even if already initialised)."""
    return self.assign_statistics(*self.initial_statistics(x))

  def _maybe_initialize(self, x):
    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context() is False:
      # Inside a tf.distribute replica, assigning a mirrored variable from one replica's data
      # is not allowed: the training system calls `initialize` before `fit` instead.
      return []
    if tf.executing_eagerly():
      if not bool(self.initialized.numpy()):
        self.initialize(x)
      return []

    def initialize():
      with tf.control_dependencies([self.initialize(x)]):
        return tf.constant(True)

    return [tf.cond(self.initialized, lambda: tf.constant(False), initialize)]

  def _inverse(self, x):
    x = self._checked(x, "input")
    with tf.control_dependencies(self._maybe_initialize(x)):
      return (x + self.bias) * tf.exp(self.log_scale)

  def _forward(self, y):
    y = self._checked(y, "input")
    return y * tf.exp(-self.log_scale) - self.bias

  def _inverse_log_det_jacobian(self, x):
    x = self._checked(x, "input")
    with tf.control_dependencies(self._maybe_initialize(x)):
      return (image_bijector.num_pixels(x, self.dtype) * tf.reduce_sum(self.log_scale) *
              image_bijector.batch_ones(x, self.dtype))

  def _forward_log_det_jacobian(self, y):
    y = self._checked(y, "input")
    return -(image_bijector.num_pixels(y, self.dtype) * tf.reduce_sum(self.log_scale) *
             image_bijector.batch_ones(y, self.dtype))
