"""Squeeze: space-to-depth, the reshaping step of multi-scale flows."""

import tensorflow as tf
import tensorflow_probability as tfp

from tfinvconv.bijectors import image_bijector


class Squeeze(tfp.bijectors.Bijector):
  """Space-to-depth by `factor` (Dinh et al., 2017; Glow).

  In the data -> latent direction (`inverse`) an event [H, W, C] becomes
  [H / factor, W / factor, C * factor^2] (`tf.nn.space_to_depth` order); `forward` undoes it.
  A permutation of the entries: log-det 0. H and W must be divisible by `factor`.
  """

  def __init__(self, factor=2, validate_args=False, name="squeeze"):
    parameters = dict(locals())
    self._factor = image_bijector.check_int(factor, "factor")
    with tf.name_scope(name) as name:
      super().__init__(forward_min_event_ndims=3, inverse_min_event_ndims=3,
                       is_constant_jacobian=True, validate_args=validate_args,
                       parameters=parameters, name=name)

  @property
  def factor(self):
    return self._factor

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    return {}

  def _check_divisible(self, x):
    x = tf.convert_to_tensor(x)
    if x.shape.rank is not None and x.shape.rank < 3:
      raise ValueError(f"Squeeze needs events of shape [height, width, channels], got shape "
                       f"{x.shape}")
    f = self._factor
    for axis, what in ((-3, "height"), (-2, "width")):
      size = x.shape[axis] if x.shape.rank is not None else None
      if size is not None and size % f:
        raise ValueError(f"Squeeze(factor={f}) needs the {what} to be divisible by {f}, got "
                         f"{size}")
      if size is None and self.validate_args:
        with tf.control_dependencies([tf.debugging.assert_equal(
            tf.shape(x)[axis] % f, 0, message=f"Squeeze: {what} not divisible by {f}")]):
          x = tf.identity(x)
    return x

  def _inverse(self, x):
    x = self._check_divisible(x)
    return image_bijector.as_batch_of_images(lambda t: tf.nn.space_to_depth(t, self._factor), x)

  def _forward(self, y):
    y = tf.convert_to_tensor(y)
    channels = y.shape[-1] if y.shape.rank is not None else None
    if channels is not None and channels % (self._factor ** 2):
      raise ValueError(f"Squeeze(factor={self._factor}).forward needs channels divisible by "
                       f"{self._factor ** 2}, got {channels}")
    return image_bijector.as_batch_of_images(lambda t: tf.nn.depth_to_space(t, self._factor), y)

  def _forward_log_det_jacobian(self, y):
    return tf.zeros(tf.shape(y)[:-3], y.dtype)

  def _forward_event_shape(self, input_shape):
    h, w, c = input_shape[-3:]
    f = self._factor
    return input_shape[:-3].concatenate([
        None if h is None else h * f, None if w is None else w * f,
        None if c is None else c // (f * f)])

  def _forward_event_shape_tensor(self, input_shape):
    f = self._factor
    return tf.concat([input_shape[:-3], [input_shape[-3] * f, input_shape[-2] * f,
                                         input_shape[-1] // (f * f)]], axis=0)

  def _inverse_event_shape(self, output_shape):
    h, w, c = output_shape[-3:]
    f = self._factor
    return output_shape[:-3].concatenate([
        None if h is None else h // f, None if w is None else w // f,
        None if c is None else c * f * f])

  def _inverse_event_shape_tensor(self, output_shape):
    f = self._factor
    return tf.concat([output_shape[:-3], [output_shape[-3] // f, output_shape[-2] // f,
                                          output_shape[-1] * f * f]], axis=0)
