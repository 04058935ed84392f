"""Conv1x1: Glow's invertible 1x1 convolution."""

import numpy as np
import scipy.linalg
import tensorflow as tf

from tfinvconv.bijectors import image_bijector


class Conv1x1(image_bijector.ImageBijector):
  """Glow's invertible 1x1 convolution (Kingma & Dhariwal, 2018).

  In the data -> latent direction (`inverse`) every pixel's channel vector is multiplied by a
  C x C matrix W (row vectors: y = x @ W); `forward` (sampling) multiplies by W^{-1}.

      log |det dy/dx| = H * W_img * log |det W|

  `lu_decomposed=True` (Glow's LU form): W = P @ L @ (U + diag(sign * exp(log_abs_diag))) with
  a fixed permutation P, unit lower-triangular L, strictly upper U and fixed signs, so
  log |det W| = sum(log_abs_diag) and W stays invertible whatever the optimizer does.
  `lu_decomposed=False`: W is a free matrix and log |det W| comes from `tf.linalg.slogdet` (an
  optimizer can in principle make it singular; Glow's original form).

  Initialised to a random rotation (the Q of a QR decomposition of a Gaussian matrix), so
  log |det W| = 0 at the start. `seed` makes the rotation reproducible.
  """

  def __init__(self, num_channels, lu_decomposed=True, seed=None, dtype=tf.float32,
               validate_args=False, name="conv1x1"):
    parameters = dict(locals())
    with tf.name_scope(name) as name:
      super().__init__(num_channels, dtype, validate_args, name, parameters)
      self._lu_decomposed = bool(lu_decomposed)
      rng = np.random.default_rng(seed)
      rotation = np.linalg.qr(rng.normal(size=(num_channels, num_channels)))[0]
      np_dtype = self.dtype.as_numpy_dtype
      if self._lu_decomposed:
        permutation, lower, upper = scipy.linalg.lu(rotation)
        diag = np.diag(upper)
        self.permutation = tf.Variable(permutation.astype(np_dtype), trainable=False,
                                       name="permutation")
        self.lower = tf.Variable(np.tril(lower, -1).astype(np_dtype), name="lower")
        self.upper = tf.Variable(np.triu(upper, 1).astype(np_dtype), name="upper")
        self.sign = tf.Variable(np.sign(diag).astype(np_dtype), trainable=False, name="sign")
        self.log_abs_diag = tf.Variable(np.log(np.abs(diag)).astype(np_dtype),
                                        name="log_abs_diag")
      else:
        self.weight = tf.Variable(rotation.astype(np_dtype), name="weight")

  @property
  def lu_decomposed(self):
    return self._lu_decomposed

  def matrix(self):
    """The current C x C matrix W (data -> latent: y = x @ W)."""
    if not self._lu_decomposed:
      return tf.convert_to_tensor(self.weight)
    eye = tf.eye(self._num_channels, dtype=self.dtype)
    lower = tf.linalg.band_part(self.lower, -1, 0) - tf.linalg.band_part(self.lower, 0, 0) + eye
    upper = (tf.linalg.band_part(self.upper, 0, -1) - tf.linalg.band_part(self.upper, 0, 0) +
             tf.linalg.diag(self.sign * tf.exp(self.log_abs_diag)))
    return self.permutation @ lower @ upper

  def _log_abs_det(self):
    if self._lu_decomposed:
      return tf.reduce_sum(self.log_abs_diag)
    return tf.linalg.slogdet(self.weight)[1]

  def _inverse(self, x):
    x = self._checked(x, "input")
    return x @ self.matrix()

  def _forward(self, y):
    y = self._checked(y, "input")
    return y @ tf.linalg.inv(self.matrix())

  def _inverse_log_det_jacobian(self, x):
    x = self._checked(x, "input")
    return image_bijector.num_pixels(x, self.dtype) * self._log_abs_det() * image_bijector.batch_ones(
        x, self.dtype)

  def _forward_log_det_jacobian(self, y):
    return -self._inverse_log_det_jacobian(y)
