"""Helpers shared by the image bijectors: argument checks and batch-shape handling."""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util


def check_int(value, name, minimum=1, maximum=None):
  """An int argument in [minimum, maximum]; errors name the argument and the allowed range."""
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"{name} must be an int, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be at least {minimum}, got {value}")
  if maximum is not None and value > maximum:
    raise ValueError(f"{name} must be at most {maximum}, got {value}")
  return value


def check_num_channels(num_channels, minimum=1):
  return check_int(num_channels, "num_channels", minimum)


def check_dtype(dtype):
  dtype = tf.as_dtype(dtype)
  if dtype not in (tf.float32, tf.float64):
    raise TypeError(f"dtype must be float32 or float64, got {dtype.name}")
  return dtype


def check_image(x, num_channels, validate_args, what="input"):
  """Static (and with validate_args, runtime) checks of an [..., H, W, C] event."""
  x = tf.convert_to_tensor(x)
  if x.shape.rank is not None and x.shape.rank < 3:
    raise ValueError(f"{what} must have an event of shape [height, width, channels], got shape "
                     f"{x.shape}")
  channels = x.shape[-1] if x.shape.rank is not None else None
  if channels is not None and channels != num_channels:
    raise ValueError(f"{what} has {channels} channels but the bijector was built for "
                     f"{num_channels}")
  if validate_args and channels is None:
    with tf.control_dependencies([tf.debugging.assert_equal(
        tf.shape(x)[-1], num_channels,
        message=f"{what} has the wrong number of channels (expected {num_channels})")]):
      x = tf.identity(x)
  return x


def num_pixels(x, dtype):
  """H * W of an [..., H, W, C] tensor, as `dtype` (for log-determinants)."""
  shape = tf.shape(x)
  return tf.cast(shape[-3] * shape[-2], dtype)


def batch_ones(x, dtype):
  """Ones of the batch shape of an [..., H, W, C] tensor (to broadcast a log-det over it)."""
  return tf.ones(tf.shape(x)[:-3], dtype)


def as_batch_of_images(fn, x):
  """Applies fn, which needs [N, H, W, C], to x of any batch shape [..., H, W, C]."""
  if x.shape.rank == 4:
    return fn(x)
  shape = tf.shape(x)
  flat = tf.reshape(x, tf.concat([[-1], shape[-3:]], axis=0))
  out = fn(flat)
  return tf.reshape(out, tf.concat([shape[:-3], tf.shape(out)[1:]], axis=0))


class _GraphOnlyCache(cache_util.BijectorCache):
  """TFP's result cache, but only while tracing a graph.

  TFP keys cached results on the input tensor object. Our bijectors hold variables, so in eager
  mode the same input after an optimizer step must not return the old result; inside a traced
  function every run recomputes from the current variable values, so caching stays correct there
  (and saves recomputing inverses for log-dets).
  """

  def _lookup(self, input, forward_name, inverse_name, **kwargs):  # pylint: disable=redefined-builtin
    if tf.executing_eagerly():
      return self._invoke(input, forward_name, kwargs, {})
    return super()._lookup(input, forward_name, inverse_name, **kwargs)

  def _attributes(self, input, fn_name, **kwargs):  # pylint: disable=redefined-builtin
    if tf.executing_eagerly():
      return {}
    return super()._attributes(input, fn_name, **kwargs)


class ImageBijector(tfp.bijectors.Bijector):
  """Base for bijectors on [height, width, channels] events with a fixed channel count.

  Instances compare by identity: TFP's default equality compares constructor arguments, which
  would let two layers with the same configuration but different weights share cached results.
  """

  _cache = _GraphOnlyCache()

  def __hash__(self):
    return id(self)

  def __eq__(self, other):
    return self is other

  def __init__(self, num_channels, dtype, validate_args, name, parameters, **kwargs):
    self._num_channels = check_num_channels(num_channels, kwargs.pop("min_channels", 1))
    super().__init__(forward_min_event_ndims=3, dtype=check_dtype(dtype),
                     validate_args=validate_args, parameters=parameters, name=name, **kwargs)

  @property
  def num_channels(self):
    return self._num_channels

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    return {}

  def _checked(self, x, what):
    return check_image(x, self._num_channels, self.validate_args, what)

  def inverse_and_log_det(self, x):
    """(inverse(x), inverse_log_det_jacobian(x, event_ndims=3)) in one pass; layers whose
    log-det shares work with the map (the coupling's network) override this."""
    return self.inverse(x), self.inverse_log_det_jacobian(x, event_ndims=3)


def inverse_and_log_det(bijector, x):
  """The data -> latent map and its log-det for any bijector on [H, W, C] events."""
  if isinstance(bijector, ImageBijector):
    return bijector.inverse_and_log_det(x)
  return bijector.inverse(x), bijector.inverse_log_det_jacobian(x, event_ndims=3)
