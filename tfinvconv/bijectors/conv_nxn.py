"""ConvNxN: the invertible n x n convolution of Truong et al."""

import tensorflow as tf

from tfinvconv.bijectors import image_bijector
from tfinvconv.bijectors.conv1x1 import Conv1x1
from tfinvconv.bijectors.invertible_shift import InvertibleShift


class ConvNxN(image_bijector.ImageBijector):
  """Invertible n x n convolution = invertible shift function, then Glow's 1x1 convolution.

  Truong et al. rewrite a standard convolution as a sum of 1x1 convolutions of spatially shifted
  inputs and replace the shifts by one learned per-channel invertible shift function g, so the
  n x n convolution becomes conv1x1(g(x)) (their Algorithm 1). In the data -> latent direction
  (`inverse`):

      y = conv1x1(shift(x)),  log |det| = H*W * (sum_c log|s_c| + log|det W|)

  and `forward` (sampling) applies the two inverses in reverse order. See `InvertibleShift` and
  `Conv1x1` for the parameterisations; both start at (a rotation of) the identity.
  """

  def __init__(self, num_channels, lu_decomposed=True, seed=None, dtype=tf.float32,
               validate_args=False, name="conv_nxn"):
    parameters = dict(locals())
    with tf.name_scope(name) as name:
      super().__init__(num_channels, dtype, validate_args, name, parameters)
      self.shift_function = InvertibleShift(num_channels, dtype=dtype,
                                            validate_args=validate_args)
      self.conv1x1 = Conv1x1(num_channels, lu_decomposed=lu_decomposed, seed=seed, dtype=dtype,
                             validate_args=validate_args)

  def _inverse(self, x):
    return self.conv1x1.inverse(self.shift_function.inverse(self._checked(x, "input")))

  def _forward(self, y):
    return self.shift_function.forward(self.conv1x1.forward(self._checked(y, "input")))

  def _inverse_log_det_jacobian(self, x):
    # Both parts have Jacobians that do not depend on the values, only on the image size.
    x = self._checked(x, "input")
    return (self.shift_function.inverse_log_det_jacobian(x, event_ndims=3) +
            self.conv1x1.inverse_log_det_jacobian(x, event_ndims=3))

  def _forward_log_det_jacobian(self, y):
    return -self._inverse_log_det_jacobian(y)
