"""EmergingConv: Hoogeboom et al.'s emerging convolution, from two InverseConv layers."""

import tensorflow as tf

from tfinvconv.bijectors import image_bijector
from tfinvconv.bijectors.inverse_conv import InverseConv


class EmergingConv(image_bijector.ImageBijector):
  """Emerging convolution (Hoogeboom, van den Berg & Welling, 2019).

  Two masked causal convolutions pointing to opposite corners (top-left, then bottom-right),
  each with a learned diagonal, applied in the data -> latent direction (`inverse`):

      y = conv_br(conv_tl(x)),  log |det dy/dx| = H*W * sum_c (log d_tl,c + log d_br,c)

  Their composition has a centred `kernel_size` x `kernel_size` receptive field, so
  `kernel_size` must be odd; each half is ((kernel_size + 1) / 2)-square. Sampling (`forward`)
  solves both by back-substitution (`tfinvconv.ops.inverse_causal_conv2d`), in reverse order.
  Starts at the identity. Hoogeboom et al. place it after a 1x1 convolution; compose it with
  `Conv1x1` in a flow step.
  """

  def __init__(self, num_channels, kernel_size=3, implementation="auto", dtype=tf.float32,
               validate_args=False, name="emerging_conv"):
    parameters = dict(locals())
    image_bijector.check_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
      raise ValueError(f"kernel_size must be odd and positive (a centred receptive field), "
                       f"got {kernel_size}")
    with tf.name_scope(name) as name:
      super().__init__(num_channels, dtype, validate_args, name, parameters)
      half = (kernel_size + 1) // 2
      common = dict(kernel_size=half, learn_diagonal=True, implementation=implementation,
                    dtype=dtype, validate_args=validate_args)
      self.top_left = InverseConv(num_channels, corner="top_left", name="top_left", **common)
      self.bottom_right = InverseConv(num_channels, corner="bottom_right", name="bottom_right",
                                      **common)

  def _inverse(self, x):
    return self.bottom_right.forward(self.top_left.forward(self._checked(x, "input")))

  def _forward(self, y):
    return self.top_left.inverse(self.bottom_right.inverse(self._checked(y, "input")))

  def _inverse_log_det_jacobian(self, x):
    # Both halves have value-independent Jacobians (triangular with a learned diagonal).
    x = self._checked(x, "input")
    return (self.top_left.forward_log_det_jacobian(x, event_ndims=3) +
            self.bottom_right.forward_log_det_jacobian(x, event_ndims=3))

  def _forward_log_det_jacobian(self, y):
    return -self._inverse_log_det_jacobian(y)
