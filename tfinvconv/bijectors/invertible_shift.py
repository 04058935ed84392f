"""InvertibleShift: the per-channel invertible shift function of Truong et al."""

import tensorflow as tf

from tfinvconv.bijectors import image_bijector


class InvertibleShift(image_bijector.ImageBijector):
  """Per-channel affine map: the invertible shift function of Truong et al. (2023), §4.1.

  In the data -> latent direction (`inverse`, used for density evaluation):

      y[..., h, w, c] = s_c * x[..., h, w, c] + t_c

  and `forward` (latent -> data, sampling) is x = (y - t) / s. The log-determinant of the
  data -> latent map is

      log |det dy/dx| = H * W * sum_c log |s_c|.

  Parameterisation: s = exp(log_scale), so s stays nonzero (the paper's invertibility
  condition) whatever the optimizer does. Initialised to the identity (log_scale = 0, t = 0).

  Reference: Truong et al., "Generalizing the invertible 1x1 convolution to an invertible
  n x n convolution" (math: docs/math.md, section 5).

  >>> shift = InvertibleShift(num_channels=3)
  >>> y = shift.inverse(tf.ones([2, 4, 4, 3]))
  """

  def __init__(self, num_channels, dtype=tf.float32, validate_args=False,
               name="invertible_shift"):
    parameters = dict(locals())
    with tf.name_scope(name) as name:
      super().__init__(num_channels, dtype, validate_args, name, parameters)
      self.log_scale = tf.Variable(tf.zeros([num_channels], self.dtype), name="log_scale")
      self.shift = tf.Variable(tf.zeros([num_channels], self.dtype), name="shift")

  def _inverse(self, x):
    x = self._checked(x, "input")
    return x * tf.exp(self.log_scale) + self.shift

  def _forward(self, y):
    y = self._checked(y, "input")
    return (y - self.shift) * tf.exp(-self.log_scale)

  def _inverse_log_det_jacobian(self, x):
    x = self._checked(x, "input")
    per_image = image_bijector.num_pixels(x, self.dtype) * tf.reduce_sum(self.log_scale)
    return per_image * image_bijector.batch_ones(x, self.dtype)

  def _forward_log_det_jacobian(self, y):
    return -self._inverse_log_det_jacobian(y)
