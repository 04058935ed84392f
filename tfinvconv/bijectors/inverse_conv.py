"""InverseConv: the Inverse-Flow layer (masked causal k x k convolution and its exact inverse)."""

import tensorflow as tf

from tfinvconv import ops
from tfinvconv.bijectors import image_bijector
from tfinvconv.ops import causal_conv


class InverseConv(image_bijector.ImageBijector):
  """Inverse-Flow's invertible convolution (Nagar & Varma): a masked causal k x k convolution.

  `forward` (latent -> data, sampling) is the convolution itself, fast:

      x[h,w,o] = sum_{p,q<k} sum_i K[p,q,i,o] z[h+p-k+1, w+q-k+1, i]   (corner top_left)

  where the same-pixel tap K[k-1,k-1] is upper triangular over (input, output) channels.
  `inverse` (data -> latent, density evaluation and training) is its exact inverse by
  back-substitution over anti-diagonals, with the custom gradient of `tfinvconv.ops`.

      log |det dx/dz| = H * W * sum_c log |d_c|,   d = diagonal of K[k-1,k-1]

  `learn_diagonal=False`: d = 1, volume preserving (log-det 0), as in Inverse-Flow / FInC.
  `learn_diagonal=True`: d = exp(log_diagonal), never zero (CInC / Emerging style).
  Only the free entries are variables: `taps` [k*k-1, C, C] (every tap but the same pixel),
  `centre_upper` [C(C-1)/2] (the strictly upper same-pixel entries) and `log_diagonal` [C];
  `kernel()` assembles the [k, k, C, C] HWIO kernel. Initialised to the identity.
  Even kernel sizes are fine (the taps point to one corner). The FInC layer (convolution in the
  data -> latent direction) is `tfp.bijectors.Invert(InverseConv(...))`.

  Reference: Nagar & Varma, "Inverse-Flow"; the math, the gradient rule and the corners are in
  docs/math.md.
  """

  def __init__(self, num_channels, kernel_size=3, corner="top_left", learn_diagonal=False,
               implementation="auto", dtype=tf.float32, validate_args=False,
               name="inverse_conv"):
    parameters = dict(locals())
    image_bijector.check_int(kernel_size, "kernel_size", 1, causal_conv.MAX_KERNEL_SIZE)
    if corner not in ops.CORNERS:
      raise ValueError(f"unknown corner {corner!r}; expected one of {', '.join(ops.CORNERS)}")
    if implementation not in ops.IMPLEMENTATIONS:
      raise ValueError(f"unknown implementation {implementation!r}; expected one of "
                       f"{', '.join(ops.IMPLEMENTATIONS)}")
    with tf.name_scope(name) as name:
      super().__init__(num_channels, dtype, validate_args, name, parameters)
      self._kernel_size = kernel_size
      self._corner = corner
      self._learn_diagonal = bool(learn_diagonal)
      self._implementation = implementation
      c = num_channels
      self.taps = tf.Variable(tf.zeros([kernel_size * kernel_size - 1, c, c], self.dtype),
                              name="taps")
      self.centre_upper = tf.Variable(tf.zeros([c * (c - 1) // 2], self.dtype),
                                      name="centre_upper")
      self.log_diagonal = (tf.Variable(tf.zeros([c], self.dtype), name="log_diagonal")
                           if self._learn_diagonal else None)

  @property
  def kernel_size(self):
    return self._kernel_size

  @property
  def corner(self):
    return self._corner

  @property
  def learn_diagonal(self):
    return self._learn_diagonal

  def diagonal(self):
    if self._learn_diagonal:
      return tf.exp(self.log_diagonal)
    return tf.ones([self._num_channels], self.dtype)

  def kernel(self):
    """The [k, k, C, C] HWIO kernel, zero where the mask is zero."""
    c, k = self._num_channels, self._kernel_size
    rows, cols = [], []
    for i in range(c):  # strictly upper entries (input i < output o), row-major
      for o in range(i + 1, c):
        rows.append(i)
        cols.append(o)
    if rows:
      centre = tf.scatter_nd(tf.constant(list(zip(rows, cols)), tf.int32), self.centre_upper,
                             [c, c])
    else:
      centre = tf.zeros([c, c], self.dtype)
    centre = centre + tf.linalg.diag(self.diagonal())
    return tf.reshape(tf.concat([self.taps, centre[None]], axis=0), [k, k, c, c])

  def _forward(self, z):
    z = self._checked(z, "input")
    kernel = self.kernel()
    return image_bijector.as_batch_of_images(lambda t: ops.causal_conv2d(t, kernel, self._corner), z)

  def _inverse(self, x):
    x = self._checked(x, "input")
    kernel = self.kernel()
    return image_bijector.as_batch_of_images(
        lambda t: ops.inverse_causal_conv2d(t, kernel, self._corner, self._implementation), x)

  def _forward_log_det_jacobian(self, z):
    z = self._checked(z, "input")
    if not self._learn_diagonal:
      return tf.zeros(tf.shape(z)[:-3], self.dtype)
    return (image_bijector.num_pixels(z, self.dtype) * tf.reduce_sum(self.log_diagonal) *
            image_bijector.batch_ones(z, self.dtype))

  def _inverse_log_det_jacobian(self, x):
    return -self._forward_log_det_jacobian(x)
