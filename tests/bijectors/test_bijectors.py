"""Every bijector against independent references: dense Jacobians (float64), finite
differences, TFP's own bijector test utilities and the change-of-variables formula."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tests.bijectors import checks
from tfinvconv import bijectors as tib

tfb = tfp.bijectors
tfd = tfp.distributions
IMAGE = (3, 4)  # height, width of the test events (Squeeze cases use 4 x 4)


def _randomize(bijector, rng, scale=0.3):
  """Random, non-identity parameters (ActNorm marked initialised so data can't reset them)."""
  for variable in bijector.trainable_variables:
    variable.assign(rng.normal(scale=scale, size=variable.shape))
  for module in [bijector] + list(bijector.submodules):
    if isinstance(module, tib.ActNorm):
      module.initialized.assign(True)
  return bijector


# name -> (factory, channels of the data event, image size)
CASES = {
    "shift": (lambda: tib.InvertibleShift(3, dtype=tf.float64), 3, IMAGE),
    "conv1x1_lu": (lambda: tib.Conv1x1(3, seed=1, dtype=tf.float64), 3, IMAGE),
    "conv1x1_plain": (lambda: tib.Conv1x1(3, lu_decomposed=False, seed=2, dtype=tf.float64), 3,
                      IMAGE),
    "conv_nxn": (lambda: tib.ConvNxN(5, seed=3, dtype=tf.float64), 5, IMAGE),
    "inverse_conv_k3_custom": (lambda: tib.InverseConv(
        3, 3, "top_left", implementation="custom_op", dtype=tf.float64), 3, IMAGE),
    "inverse_conv_k2_tf_learned": (lambda: tib.InverseConv(
        2, 2, "bottom_right", learn_diagonal=True, implementation="tf", dtype=tf.float64), 2,
                                   IMAGE),
    "inverse_conv_k3_learned_top_right": (lambda: tib.InverseConv(
        3, 3, "top_right", learn_diagonal=True, dtype=tf.float64), 3, IMAGE),
    "finc": (lambda: tfb.Invert(tib.InverseConv(3, 2, "bottom_left", learn_diagonal=True,
                                                dtype=tf.float64)), 3, IMAGE),
    "emerging": (lambda: tib.EmergingConv(3, 3, dtype=tf.float64), 3, IMAGE),
    "actnorm": (lambda: tib.ActNorm(3, dtype=tf.float64), 3, IMAGE),
    "coupling_affine": (lambda: tib.AffineCoupling(4, hidden_channels=6, dtype=tf.float64), 4,
                        IMAGE),
    "coupling_odd_channels": (lambda: tib.AffineCoupling(5, hidden_channels=4,
                                                         dtype=tf.float64), 5, IMAGE),
    "coupling_additive": (lambda: tib.AffineCoupling(4, hidden_channels=6, additive=True,
                                                     dtype=tf.float64), 4, IMAGE),
    "squeeze": (lambda: tib.Squeeze(2), 2, (4, 4)),
}


def _make(name, seed=0):
  factory, channels, image = CASES[name]
  rng = np.random.default_rng(seed)
  bijector = _randomize(factory(), rng)
  x = rng.normal(size=(2,) + image + (channels,))
  return bijector, x, rng


def _latent_shape(bijector, x):
  return tuple(bijector.inverse_event_shape(x.shape[1:]).as_list())


@pytest.mark.parametrize("name", sorted(CASES))
def test_log_det_matches_dense_jacobian(name):
  bijector, x, _ = _make(name)
  batch, n = x.shape[0], int(np.prod(x.shape[1:]))
  flat = tf.constant(x.reshape(batch, n))
  with tf.GradientTape() as tape:
    tape.watch(flat)
    z = bijector.inverse(tf.reshape(flat, x.shape))
    z_flat = tf.reshape(z, [batch, -1])
  jacobian = tape.batch_jacobian(z_flat, flat).numpy()
  assert jacobian.shape == (batch, n, n)
  want = np.linalg.slogdet(jacobian)[1]
  got = bijector.inverse_log_det_jacobian(tf.constant(x), event_ndims=3).numpy()
  np.testing.assert_allclose(got, want, atol=1e-9)
  fldj = bijector.forward_log_det_jacobian(tf.identity(z), event_ndims=3).numpy()
  np.testing.assert_allclose(fldj, -want, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_and_tfp_bijective_and_finite(name):
  bijector, x, rng = _make(name)
  z = bijector.inverse(tf.constant(x)).numpy()
  assert z.shape == (2,) + _latent_shape(bijector, x)
  np.testing.assert_allclose(bijector.forward(tf.constant(z)).numpy(), x, atol=1e-10)
  z2 = rng.normal(size=z.shape)
  np.testing.assert_allclose(bijector.inverse(bijector.forward(tf.constant(z2))).numpy(), z2,
                             atol=1e-10)
  checks.assert_bijective_and_finite(bijector, x=z2, y=x, event_ndims=3)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_finite_differences(name):
  """d/d(input, every variable) of sum(g * inverse(x)) + ildj(x), along random directions."""
  bijector, x, rng = _make(name)
  g = rng.normal(size=(2,) + _latent_shape(bijector, x))

  def objective():
    xt = tf.identity(tf.constant(x))  # fresh tensor: TFP caches results by tensor identity
    return (tf.reduce_sum(g * bijector.inverse(xt)) +
            tf.reduce_sum(bijector.inverse_log_det_jacobian(xt, event_ndims=3)))

  variables = list(bijector.trainable_variables)
  x_var = tf.Variable(x)
  with tf.GradientTape() as tape:
    value = (tf.reduce_sum(g * bijector.inverse(x_var)) +
             tf.reduce_sum(bijector.inverse_log_det_jacobian(x_var, event_ndims=3)))
  grads = tape.gradient(value, [x_var] + variables)
  eps = 1e-6
  for index, (variable, grad) in enumerate(zip([x_var] + variables, grads)):
    direction = rng.normal(size=variable.shape)
    analytic = 0.0 if grad is None else float(np.sum(tf.convert_to_tensor(grad) * direction))
    original = variable.numpy()
    target = x if index == 0 else None
    values = []
    for sign in (1, -1):
      if index == 0:
        x = original + sign * eps * direction
      else:
        variable.assign(original + sign * eps * direction)
      values.append(float(objective()))
    if index == 0:
      x = target
    else:
      variable.assign(original)
    numeric = (values[0] - values[1]) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-5 * max(1.0, abs(numeric)), (
        name, variable.name if index else "input", analytic, numeric)


def _flow(channels=4, dtype=tf.float64, seed=0, implementation="auto"):
  """A small Glow-like chain with every kind of layer. tfb.Chain(layers).inverse applies
  layers[0].inverse first, so the list runs from the data side to the latent side."""
  layers = [
      tfb.Invert(tib.InverseConv(channels, 3, "bottom_right", implementation=implementation,
                                 dtype=dtype)),
      tib.Squeeze(2),
      tib.ActNorm(4 * channels, dtype=dtype),
      tib.InverseConv(4 * channels, 2, learn_diagonal=True, implementation=implementation,
                      dtype=dtype),
      tib.ConvNxN(4 * channels, seed=seed, dtype=dtype),
      tib.EmergingConv(4 * channels, 3, implementation=implementation, dtype=dtype),
      tib.AffineCoupling(4 * channels, hidden_channels=8, dtype=dtype),
  ]
  rng = np.random.default_rng(seed)
  for layer in layers:
    _randomize(layer, rng, scale=0.1)
  return layers


def test_transformed_distribution_log_prob_is_the_change_of_variables():
  layers = _flow()
  chain = tfb.Chain(layers)
  base = tfd.Sample(tfd.Normal(tf.constant(0.0, tf.float64), 1.0), [2, 2, 16])
  dist = tfd.TransformedDistribution(base, chain)
  assert dist.event_shape == [4, 4, 4]
  x = np.random.default_rng(1).normal(size=(3, 4, 4, 4))
  # By hand: run the layers data -> latent one at a time, adding each log-det.
  z, log_det = tf.constant(x), 0.0
  for layer in layers:
    log_det += layer.inverse_log_det_jacobian(z, event_ndims=3)
    z = layer.inverse(z)
  normal = -0.5 * z ** 2 - 0.5 * np.log(2 * np.pi)
  want = tf.reduce_sum(normal, axis=[1, 2, 3]) + log_det
  np.testing.assert_allclose(dist.log_prob(tf.constant(x)).numpy(), want.numpy(), atol=1e-9)
  samples = dist.sample(5, seed=3)
  assert samples.shape == (5, 4, 4, 4)
  np.testing.assert_allclose(chain.forward(chain.inverse(samples)).numpy(), samples.numpy(),
                             atol=1e-9)


@pytest.mark.parametrize("implementation", ["custom_op", "tf"])
def test_chain_in_tf_function_with_unknown_batch_and_float32(implementation):
  layers = _flow(dtype=tf.float32, implementation=implementation)
  chain = tfb.Chain(layers)
  base = tfd.Sample(tfd.Normal(0.0, 1.0), [2, 2, 16])
  dist = tfd.TransformedDistribution(base, chain)
  variables = chain.trainable_variables
  assert len(variables) > 10

  @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 4], tf.float32)])
  def loss_and_grads(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(dist.log_prob(x))
    return loss, tape.gradient(loss, variables)

  for batch in (1, 3):
    x = np.random.default_rng(batch).normal(size=(batch, 4, 4, 4)).astype(np.float32)
    loss, grads = loss_and_grads(x)
    assert np.isfinite(loss.numpy())
    eager = -tf.reduce_mean(dist.log_prob(tf.constant(x)))
    np.testing.assert_allclose(loss.numpy(), eager.numpy(), rtol=1e-4)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)


@pytest.mark.parametrize("name", ["shift", "inverse_conv_k3_custom", "actnorm", "squeeze",
                                  "coupling_affine", "emerging"])
def test_any_batch_shape(name):
  bijector, x, rng = _make(name)
  x5 = rng.normal(size=(2, 3) + x.shape[1:])
  z = bijector.inverse(tf.constant(x5))
  per_image = bijector.inverse(tf.constant(x5.reshape((6,) + x.shape[1:])))
  np.testing.assert_allclose(z.numpy().reshape(per_image.shape), per_image.numpy(), atol=1e-12)
  assert bijector.inverse_log_det_jacobian(tf.constant(x5), event_ndims=3).shape == (2, 3)
  np.testing.assert_allclose(bijector.forward(z).numpy(), x5, atol=1e-10)


def test_variables_are_tracked_by_checkpoint_and_tf_keras():
  layers = _flow(dtype=tf.float32)
  chain = tfb.Chain(layers)

  class Holder(tf_keras.Model):

    def __init__(self):
      super().__init__()
      self.flow = chain

    def call(self, x):
      return chain.inverse(x)

  model = Holder()
  model(tf.zeros([1, 4, 4, 4]))
  assert len(model.trainable_weights) == len(chain.trainable_variables) > 10
  x = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 4, 4)), tf.float32)
  before = chain.inverse(x).numpy()
  checkpoint = tf.train.Checkpoint(flow=chain)
  import tempfile  # pylint: disable=g-import-not-at-top
  path = checkpoint.save(tempfile.mkdtemp() + "/ckpt")
  for variable in chain.trainable_variables:
    variable.assign(variable + 0.1)
  assert not np.allclose(chain.inverse(tf.identity(x)).numpy(), before)
  checkpoint.restore(path).assert_consumed()
  np.testing.assert_allclose(chain.inverse(tf.identity(x)).numpy(), before, atol=1e-6)


def test_inverse_conv_has_exactly_the_free_parameters():
  for k, c, learn in ((3, 4, False), (2, 5, True), (1, 1, True)):
    layer = tib.InverseConv(c, k, learn_diagonal=learn)
    count = sum(int(np.prod(v.shape)) for v in layer.trainable_variables)
    assert count == (k * k - 1) * c * c + c * (c - 1) // 2 + (c if learn else 0)
    kernel = layer.kernel().numpy()
    np.testing.assert_array_equal(np.tril(kernel[k - 1, k - 1], -1), 0)


def test_layers_start_as_identity_or_rotation():
  x = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 4, 4)), tf.float32)
  for layer in (tib.InvertibleShift(4), tib.InverseConv(4), tib.EmergingConv(4),
                tfb.Invert(tib.InverseConv(4, 2))):
    np.testing.assert_allclose(layer.inverse(x).numpy(), x.numpy(), atol=1e-6)
  coupling = tib.AffineCoupling(4, hidden_channels=8)
  z = coupling.inverse(x).numpy()  # zero-initialised output layer: shift 0, scale sigmoid(2)
  np.testing.assert_allclose(z[..., :2], x.numpy()[..., :2])
  np.testing.assert_allclose(z[..., 2:], x.numpy()[..., 2:] / (1 + np.exp(-2.0)), rtol=1e-5)
  conv = tib.Conv1x1(4, seed=0)
  w = conv.matrix().numpy()
  np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-5)  # a rotation
  assert abs(float(conv.inverse_log_det_jacobian(x, event_ndims=3)[0])) < 1e-4


@pytest.mark.parametrize("additive", [False, True])
def test_coupling_is_its_formula_with_its_network(additive):
  """y_a = x_a; y_b = (x_b + shift) * scale (affine) or x_b + shift (additive), with
  (shift, scale) from the layer's own network of x_a, called here directly: a coupling that
  ignored its network (a dead layer) would still be invertible with a consistent log-det."""
  coupling = _randomize(tib.AffineCoupling(4, hidden_channels=6, additive=additive,
                                           dtype=tf.float64), np.random.default_rng(4))
  x = np.random.default_rng(5).normal(size=(2, 3, 3, 4))
  h = coupling.network(tf.constant(x[..., :2])).numpy()
  if additive:
    shift, scale = h, np.ones_like(h)
  else:
    shift, scale = h[..., 0::2], 1 / (1 + np.exp(-(h[..., 1::2] + 2)))
  assert np.abs(shift).max() > 0.1  # the network does something
  z = coupling.inverse(tf.constant(x)).numpy()
  np.testing.assert_allclose(z[..., :2], x[..., :2])
  np.testing.assert_allclose(z[..., 2:], (x[..., 2:] + shift) * scale, rtol=1e-12)
  log_det = coupling.inverse_log_det_jacobian(tf.constant(x), event_ndims=3).numpy()
  np.testing.assert_allclose(log_det, np.log(scale).sum(axis=(1, 2, 3)), rtol=1e-12)


def test_finc_is_the_inverted_layer():
  layer = tib.InverseConv(3, 2, learn_diagonal=True)
  finc = tfb.Invert(layer)
  rng = np.random.default_rng(0)
  x = tf.constant((rng.normal(size=(8, 4, 4, 3)) * [1.0, 3.0, 0.2] + [0.5, -2.0, 4.0])
                  .astype(np.float32))
  np.testing.assert_allclose(finc.inverse(x).numpy(), layer.forward(x).numpy())
