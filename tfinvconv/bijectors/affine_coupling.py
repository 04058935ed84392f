"""AffineCoupling: Glow's affine (or additive) coupling layer."""

import warnings

import tensorflow as tf
import tf_keras

from tfinvconv.bijectors import image_bijector


def network_policy(dtype):
  """The coupling network's dtype policy: the global mixed policy when its variables are the
  flow's dtype (mixed_bfloat16 / mixed_float16 on a float32 flow), else the flow's dtype.
  A global policy the flow cannot follow is reported, never dropped silently."""
  policy = tf_keras.mixed_precision.global_policy()
  mixed = policy.compute_dtype != policy.variable_dtype
  if mixed and policy.variable_dtype == dtype.name:
    return policy
  if mixed or (policy.compute_dtype != dtype.name and policy.name != "float32"):
    warnings.warn(
        f"tfinvconv: the global tf_keras policy {policy.name!r} is ignored by this "
        f"{dtype.name} flow: its coupling networks compute in {dtype.name}. Mixed precision "
        "needs a float32 flow and a mixed policy (set_global_policy('mixed_bfloat16') or "
        "'mixed_float16'); the flow's own dtype is set by its `dtype` argument",
        stacklevel=3)
  return dtype.name


class AffineCoupling(image_bijector.ImageBijector):
  """Glow's coupling layer (Kingma & Dhariwal, 2018; Dinh et al., 2017).

  The channels split into x_a (the first C // 2) and x_b (the rest). A network reads x_a:

      h = conv3x3(x_a) -> ReLU -> conv1x1 -> ReLU -> conv3x3 (zero-initialised)
      shift = h[..., 0::2],  scale = sigmoid(h[..., 1::2] + 2)

  In the data -> latent direction (`inverse`):

      y_a = x_a,  y_b = (x_b + shift) * scale,  log |det dy/dx| = sum_{h,w,c} log scale

  and `forward` (sampling) is x_b = y_b / scale - shift. The sigmoid keeps the scale in (0, 1),
  so the map stays invertible and stable whatever the optimizer does; the zero-initialised last
  convolution makes the layer start near the identity (shift 0, scale sigmoid(2) = 0.88).
  `additive=True` drops the scale (Glow's additive coupling, log-det 0).

  The network is built from tf_keras layers, so tf_keras models and `tf.train.Checkpoint`
  track its weights (Keras 3 does not track variables held inside a TFP bijector or tf.Module:
  its `model.fit` would train nothing).

  Mixed precision: under a global `tf_keras.mixed_precision` policy `mixed_bfloat16` or
  `mixed_float16` (set before the layer is built) the network computes in bfloat16 / float16
  with float32 variables; its output h is cast back to the flow's float32 before the shift,
  the scale and the log-det use it, so only the network's rounding differs from float32.
  The same rounded h is used in both directions, so `forward` still inverts `inverse`.
  """

  def __init__(self, num_channels, hidden_channels=512, additive=False, dtype=tf.float32,
               validate_args=False, name="affine_coupling"):
    parameters = dict(locals())
    image_bijector.check_int(hidden_channels, "hidden_channels")
    with tf.name_scope(name) as name:
      super().__init__(num_channels, dtype, validate_args, name, parameters, min_channels=2)
      self._additive = bool(additive)
      self._num_kept = num_channels // 2
      num_changed = num_channels - self._num_kept
      outputs = num_changed if self._additive else 2 * num_changed
      layer_dtype = network_policy(self.dtype)
      # The explicit Input keeps the bijector's dtype: Sequential.build() would add an input
      # layer in Keras' default float32 and silently round float64 data.
      self.network = tf_keras.Sequential([
          tf_keras.Input(shape=(None, None, self._num_kept), dtype=self.dtype.name),
          tf_keras.layers.Conv2D(hidden_channels, 3, padding="same", activation="relu",
                                 dtype=layer_dtype),
          tf_keras.layers.Conv2D(hidden_channels, 1, activation="relu", dtype=layer_dtype),
          tf_keras.layers.Conv2D(outputs, 3, padding="same", kernel_initializer="zeros",
                                 bias_initializer="zeros", dtype=layer_dtype),
      ], name="network")

  @property
  def additive(self):
    return self._additive

  @property
  def compute_dtype(self):
    """The dtype the network computes in (bfloat16 / float16 under a mixed policy)."""
    return tf.as_dtype(self.network.layers[0].compute_dtype)

  def _shift_and_log_scale(self, kept):
    # Back to the flow's dtype before anything enters the map or the log-det.
    h = tf.cast(image_bijector.as_batch_of_images(self.network, kept), self.dtype)
    if self._additive:
      return h, None
    # log(sigmoid(u)) = -softplus(-u), stable for large |u|.
    return h[..., 0::2], -tf.nn.softplus(-(h[..., 1::2] + 2.0))

  def _split(self, x):
    return x[..., :self._num_kept], x[..., self._num_kept:]

  def _inverse(self, x):
    return self.inverse_and_log_det(x)[0]

  def inverse_and_log_det(self, x):
    """Data -> latent map and its log-det from one evaluation of the network."""
    x = self._checked(x, "input")
    kept, changed = self._split(x)
    shift, log_scale = self._shift_and_log_scale(kept)
    changed = changed + shift
    if log_scale is None:
      log_det = tf.zeros(tf.shape(x)[:-3], self.dtype)
    else:
      changed = changed * tf.exp(log_scale)
      log_det = tf.reduce_sum(log_scale, axis=[-3, -2, -1])
    return tf.concat([kept, changed], axis=-1), log_det

  def _forward(self, y):
    kept, changed = self._split(self._checked(y, "input"))
    shift, log_scale = self._shift_and_log_scale(kept)
    if log_scale is not None:
      changed = changed * tf.exp(-log_scale)
    return tf.concat([kept, changed - shift], axis=-1)

  def _inverse_log_det_jacobian(self, x):
    kept, _ = self._split(self._checked(x, "input"))
    if self._additive:
      return tf.zeros(tf.shape(x)[:-3], self.dtype)
    _, log_scale = self._shift_and_log_scale(kept)
    return tf.reduce_sum(log_scale, axis=[-3, -2, -1])

  def _forward_log_det_jacobian(self, y):
    # y_a = x_a, so the network sees the same input in both directions.
    return -self._inverse_log_det_jacobian(y)
