"""Glow: exactness against dense Jacobians, tf_keras training on real digits, persistence."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from sklearn.datasets import load_digits

from tfinvconv import bijectors as tib
from tfinvconv.models import MIXERS
from tfinvconv.models import Glow


@pytest.fixture(scope="module")
def digits():
  """scikit-learn's bundled 8x8 digits (values 0..16) as uint8 images in [0, 255]."""
  images = load_digits().images
  return np.round(images / 16.0 * 255.0).astype(np.uint8)[..., None]


def _tiny(mixer, **kwargs):
  config = dict(num_levels=2, depth=4, hidden_channels=8, mixer=mixer)
  config.update(kwargs)
  return Glow((8, 8, 1), **config)


# The Glow fits of each mixer: `make test-quick` runs the library's own (inverse_conv), `make test`
# every one.
FIT_MIXERS = [m if m == "inverse_conv" else pytest.param(m, marks=pytest.mark.slow)
              for m in MIXERS]


def _randomize(model, rng, scale=0.1):
  for variable in model.trainable_variables:
    variable.assign(rng.normal(scale=scale, size=variable.shape))
  for module in model.submodules:
    if isinstance(module, tib.ActNorm):
      module.initialized.assign(True)


@pytest.mark.parametrize("mixer", MIXERS)
def test_decode_inverts_encode(mixer, digits):
  model = _tiny(mixer)
  model.initialize(digits[:64])
  _randomize(model, np.random.default_rng(0), scale=0.05)
  x = model.preprocess(digits[:16])
  latents = model.encode(x)
  assert [tuple(l.shape[1:]) for l in latents] == model.latent_shapes
  np.testing.assert_allclose(model.decode(latents).numpy(), x.numpy(), atol=1e-4)


@pytest.mark.parametrize("mixer", MIXERS)
def test_log_prob_is_the_dense_change_of_variables(mixer):
  """log p(x) = sum log N(latents) + log|det d latents / dx| with the Jacobian built densely."""
  model = Glow((4, 4, 1), num_levels=2, depth=1, hidden_channels=4, mixer=mixer,
               dtype=tf.float64)
  _randomize(model, np.random.default_rng(1), scale=0.2)
  x = tf.constant(np.random.default_rng(2).uniform(-0.5, 0.5, size=(3, 4, 4, 1)))
  flat = tf.reshape(x, [3, 16])
  with tf.GradientTape() as tape:
    tape.watch(flat)
    latents = model.encode(tf.reshape(flat, [3, 4, 4, 1]))
    eps = tf.concat([tf.reshape(l, [3, -1]) for l in latents], axis=1)
  jacobian = tape.batch_jacobian(eps, flat).numpy()
  want = (np.sum(-0.5 * eps.numpy() ** 2 - 0.5 * np.log(2 * np.pi), axis=1) +
          np.linalg.slogdet(jacobian)[1])
  np.testing.assert_allclose(model.log_prob(x).numpy(), want, atol=1e-9)


# 36 steps of a depth-2 width-16 model on the digits' 17 levels (deterministic). Calibrated
# (docs/quality.md): every mixer ends at 3.74-3.90; with the optimizer's rate at 0 (nothing
# learned) 4.52; with the log-det's sign flipped 1.37-2.36 (it shrinks the data and looks good);
# with the couplings' networks dead (zero shift, fixed scale) 4.2-4.3. The window: below the
# uniform model's log2(17) = 4.09 bits/dim, and above the per-pixel histogram's 2.42, which
# such a small, short run cannot reach.
FIT_WINDOW = (2.42, 4.09)


@pytest.mark.slow  # 96 steps of a width-32 Glow
def test_a_short_fit_separates_a_working_model_from_broken_ones(digits):
  """96 steps, depth 2, width 32, 17 levels (deterministic). Calibrated: 3.29 bits/dim; the
  same run with the couplings' networks dead 3.75, with the optimizer's rate at 0 4.52, with
  the log-det's sign flipped far below the 2.42 of the per-pixel histogram. Threshold 3.52,
  halfway between working and dead couplings (docs/quality.md)."""
  tf_keras.utils.set_random_seed(0)
  model = _tiny("inverse_conv", depth=2, hidden_channels=32, n_bins=17)
  model.compile(optimizer=tf_keras.optimizers.Adam(2e-3))
  data = tf.data.Dataset.from_tensor_slices(digits).shuffle(2000, seed=0).batch(64).repeat()
  model.fit(data, steps_per_epoch=12, epochs=8, verbose=0)
  result = model.evaluate(tf.data.Dataset.from_tensor_slices(digits[:256]).batch(64),
                          return_dict=True, verbose=0)
  assert 2.42 < result["bits_per_dim"] < 3.52, result


@pytest.mark.parametrize("mixer", FIT_MIXERS)
def test_fit_learns_the_digits(mixer, digits):
  tf_keras.utils.set_random_seed(0)
  model = _tiny(mixer, depth=2, hidden_channels=16, n_bins=17)
  model.compile(optimizer=tf_keras.optimizers.Adam(2e-3))
  data = tf.data.Dataset.from_tensor_slices(digits).shuffle(2000, seed=0).batch(64).repeat()
  history = model.fit(data, steps_per_epoch=12, epochs=3, verbose=0).history
  assert history["bits_per_dim"][-1] < history["bits_per_dim"][0] - 0.2, history
  result = model.evaluate(tf.data.Dataset.from_tensor_slices(digits[:256]).batch(64),
                          return_dict=True, verbose=0)
  assert FIT_WINDOW[0] < result["bits_per_dim"] < FIT_WINDOW[1], result


def test_save_and_load_weights_round_trip(tmp_path, digits):
  model = _tiny("inverse_conv")
  model.initialize(digits[:64])
  _randomize(model, np.random.default_rng(3), scale=0.05)
  x = model.preprocess(digits[:8], noise=False)
  want = model.log_prob(x).numpy()
  model.save_weights(str(tmp_path / "weights"))
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))

  loaded = _tiny("inverse_conv")
  loaded.load_weights(str(tmp_path / "weights"))
  np.testing.assert_array_equal(loaded.log_prob(x).numpy(), want)  # no re-initialisation
  restored = _tiny("inverse_conv")
  tf.train.Checkpoint(model=restored).restore(path).assert_consumed()
  np.testing.assert_array_equal(restored.log_prob(x).numpy(), want)


def test_second_fit_does_not_reinitialise(digits):
  model = _tiny("1x1", depth=1)
  model.compile(optimizer=tf_keras.optimizers.SGD(0.0))  # lr 0: only initialisation moves
  model.fit(digits[:64], batch_size=64, epochs=1, verbose=0)
  actnorms = [m for m in model.submodules if isinstance(m, tib.ActNorm)]
  assert actnorms and all(bool(a.initialized.numpy()) for a in actnorms)
  before = [a.bias.numpy().copy() for a in actnorms]
  model.fit((digits[64:128] // 3), batch_size=64, epochs=1, verbose=0)
  for actnorm, bias in zip(actnorms, before):
    np.testing.assert_array_equal(actnorm.bias.numpy(), bias)


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_one_seed_convention(digits, dequantization):
  """sample and bits_per_dim take the same seeds: two ints, or an int s meaning [s, 0]; the same
  seed gives the same numbers, another seed others; anything else is refused by name."""
  model = _tiny("1x1", dequantization=dequantization)
  _randomize(model, np.random.default_rng(5), scale=0.05)
  images = digits[:4]
  for fn in (lambda seed: model.sample(2, seed=seed), lambda seed: model.bits_per_dim(
      images, seed=seed)):
    same = [fn(seed).numpy() for seed in (3, [3, 0], (3, 0), np.int64(3), tf.constant([3, 0]),
                                          tf.constant(3, tf.int32))]
    for other in same[1:]:
      np.testing.assert_array_equal(same[0], other)
    assert not np.array_equal(fn([1, 2]).numpy(), same[0])
    np.testing.assert_array_equal(fn([1, 2]).numpy(), fn([1, 2]).numpy())
    for bad in ([1, 2, 3], 1.5, "3", [1.0, 2.0], True):
      with pytest.raises(ValueError, match=r"seed must be an int or two ints"):
        fn(bad)


def test_temperature_zero_is_deterministic_and_shapes_are_right():
  model = _tiny("finc")
  _randomize(model, np.random.default_rng(4), scale=0.05)
  a, b = model.sample(3, temperature=0.0), model.sample(3, temperature=0.0)
  assert a.shape == (3, 8, 8, 1)
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  c = model.sample(3, temperature=0.7)
  assert not np.allclose(a.numpy(), c.numpy())
  images = model.to_images(c)
  assert images.dtype == tf.uint8 and images.shape == (3, 8, 8, 1)


@pytest.mark.parametrize("mixer", ["inverse_conv", "emerging"])
def test_unknown_batch_size_in_tf_function(mixer, digits):
  model = _tiny(mixer, depth=1)
  bpd = tf.function(model.bits_per_dim,
                    input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.uint8)])
  for n in (1, 5):
    assert bpd(digits[:n]).shape == (n,)


def test_keras_callbacks(tmp_path, digits):
  model = _tiny("inverse_conv", depth=1)
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
  callbacks = [
      tf_keras.callbacks.ModelCheckpoint(str(tmp_path / "best"), monitor="loss",
                                         save_weights_only=True, save_best_only=True),
      tf_keras.callbacks.TensorBoard(str(tmp_path / "logs")),
      tf_keras.callbacks.EarlyStopping(monitor="loss", patience=5),
      tf_keras.callbacks.TerminateOnNaN(),
  ]
  model.fit(digits[:256], batch_size=64, epochs=2, callbacks=callbacks, verbose=0)
  assert (tmp_path / "best.index").exists()
  assert any((tmp_path / "logs").rglob("events.out.tfevents*"))


@pytest.mark.slow  # compiles the training step with XLA
def test_xla_with_the_tf_path(digits):
  model = _tiny("inverse_conv", depth=1, implementation="tf")
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), jit_compile=True)
  history = model.fit(digits[:128], batch_size=64, epochs=1, verbose=0).history
  assert np.isfinite(history["loss"][0])


def test_bad_configuration_says_what_to_change():
  with pytest.raises(ValueError, match=r"height 28 is not divisible by 2\*\*num_levels = 8: "
                                       r"use num_levels <= 2"):
    Glow((28, 32, 1), num_levels=3)
  with pytest.raises(ValueError, match="unknown mixer 'lu'; choose one of 1x1, nxn"):
    Glow((8, 8, 1), mixer="lu")
  with pytest.raises(ValueError, match="unknown coupling"):
    Glow((8, 8, 1), coupling="spline")
  with pytest.raises(ValueError, match="odd kernel_size"):
    Glow((8, 8, 1), mixer="emerging", kernel_size=2)
  with pytest.raises(ValueError, match="depth must be at least 1"):
    Glow((8, 8, 1), depth=0)
  with pytest.raises(ValueError, match="image_shape must be"):
    Glow((8, 8))
  model = _tiny("inverse_conv", depth=1)
  with pytest.raises(ValueError, match="no XLA kernel"):
    model.compile(optimizer="adam", jit_compile=True)
  with pytest.raises(ValueError, match="decode needs 2 latents"):
    model.decode([tf.zeros([1, 2, 2, 16])])


def test_integer_images_are_refused_by_the_continuous_api(digits):
  model = _tiny("1x1")
  for images in (digits[:4], tf.constant(digits[:4])):
    for method in (model.log_prob, model.encode):
      with pytest.raises(ValueError, match="call model.preprocess"):
        method(images)
  assert np.all(np.isfinite(model.bits_per_dim(digits[:4]).numpy()))  # the image API takes them


def _actnorm_as_identity(model):
  """ActNorm before its data-dependent initialisation, marked as initialised: the identity."""
  for module in model.submodules:
    if isinstance(module, tib.ActNorm):
      module.initialized.assign(True)


@pytest.mark.parametrize("mixer", MIXERS)
def test_bits_per_dim_at_the_identity_initialisation_is_a_hand_computation(mixer, digits):
  """Additive couplings (zero-initialised networks), identity ActNorm, mixers at their
  volume- and norm-preserving initialisation (orthogonal 1x1, identity k x k) and unit Gaussian
  priors (zero-initialised): the flow is an orthogonal map z = Qx, so per image
  -log p(x) = |x|^2 / 2 + D/2 log(2 pi), and bits/dim = (-log p(x) + D log n_bins) / (D ln 2)."""
  model = _tiny(mixer, coupling="additive", n_bins=17)
  _actnorm_as_identity(model)
  images = np.concatenate([digits[:3], np.full((1, 8, 8, 1), 255, np.uint8)])
  x = model.preprocess(images, noise=False).numpy().reshape(len(images), -1)
  dims = x.shape[1]
  want = ((0.5 * np.sum(x.astype(np.float64) ** 2, axis=1) + dims / 2 * np.log(2 * np.pi) +
           dims * np.log(17)) / (dims * np.log(2)))
  np.testing.assert_allclose(model.bits_per_dim(images, noise=False).numpy(), want, rtol=1e-6)


def test_variational_dequantizer_density_is_its_change_of_variables():
  """log q(u | x) against the log-Jacobian of eps -> u found by autodiff (float64)."""
  from tfinvconv.models.dequantization import VariationalDequantizer
  rng = np.random.default_rng(5)
  dequantizer = VariationalDequantizer(3, hidden_channels=6, dtype="float64")
  dequantizer.build((None, 4, 4, 3))
  for variable in dequantizer.trainable_variables:
    variable.assign(rng.normal(scale=0.15, size=variable.shape))
  x = tf.constant(rng.uniform(-0.5, 0.5, (2, 4, 4, 3)))
  eps = tf.constant(rng.normal(size=(2, 4, 4, 3)))
  with tf.GradientTape() as tape:
    tape.watch(eps)
    u, log_q = dequantizer(x, eps)
    total = tf.reduce_sum(u)
  # u_i depends on eps_i only (given x), so the gradient of sum(u) is the Jacobian's diagonal.
  diagonal = tape.gradient(total, eps).numpy()
  want = np.sum(-0.5 * eps.numpy() ** 2 - 0.5 * np.log(2 * np.pi) - np.log(diagonal),
                axis=(1, 2, 3))
  np.testing.assert_allclose(log_q.numpy(), want, rtol=1e-10)
  assert np.all((u.numpy() > 0) & (u.numpy() < 1))


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_bits_per_dim_bounds_the_exact_discrete_likelihood(dequantization):
  """A 4-dimensional flow: P(bin) = integral over the bin of p, computed on a grid, against the
  noisy bits/dim averaged over many draws (an upper bound in expectation, by Jensen)."""
  tf_keras.utils.set_random_seed(2)
  model = Glow((2, 2, 1), num_levels=1, depth=2, hidden_channels=8, mixer="inverse_conv",
               n_bins=4, dtype=tf.float64, dequantization=dequantization)
  model.initialize(np.random.default_rng(0).integers(0, 256, (64, 2, 2, 1)).astype(np.uint8))
  _randomize(model, np.random.default_rng(1), scale=0.3)
  image = np.array([[[[0], [64]], [[192], [255]]]], np.uint8)
  lower = model.preprocess(image, noise=False).numpy()
  grid = (np.arange(24) + 0.5) / 24  # midpoint rule over the bin, 24^4 points
  u = np.stack(np.meshgrid(grid, grid, grid, grid, indexing="ij"), -1).reshape(-1, 2, 2, 1)
  density = np.exp(model.log_prob(lower + u / 4).numpy())
  exact = -np.log2(np.mean(density) / 4 ** 4) / 4
  draws = np.concatenate([model.bits_per_dim(np.repeat(image, 4000, 0)).numpy()
                          for _ in range(5)])
  bound, spread = draws.mean(), draws.std() / np.sqrt(len(draws))
  assert bound > exact - 4 * spread, (bound, exact, spread)
  if dequantization == "uniform":
    assert bound - exact < 1.0, (bound, exact)  # and a useful one
  else:  # the bound charges -log q: eps = 0 gives u = dequantizer(lower, 0) exactly
    u, log_q = model.dequantizer(tf.constant(lower), tf.zeros_like(lower))
    log_p = model.log_prob(lower + u / 4) - log_q - 4 * np.log(4)
    np.testing.assert_allclose(model.bits_per_dim(image, noise=False).numpy(),
                               -log_p.numpy() / (4 * np.log(2)), rtol=1e-12)


def test_images_of_another_size_are_refused_by_every_entry_point():
  """16x16 images given to an 8x8 model would run and be scored per the model's 64
  dimensions instead of their 256; RGB images for a grey model are named as such."""
  model = Glow((8, 8, 1), num_levels=2, depth=1, hidden_channels=4, mixer="1x1")
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
  big = np.zeros((4, 16, 16, 1), np.uint8)
  scaled = np.zeros((4, 16, 16, 1), np.float32)
  entry_points = {
      "bits_per_dim": lambda: model.bits_per_dim(big),
      "log_prob": lambda: model.log_prob(scaled),
      "encode": lambda: model.encode(scaled),
      "initialize": lambda: model.initialize(big),
      "fit": lambda: model.fit(big, batch_size=4, epochs=1, verbose=0),
      "evaluate": lambda: model.evaluate(big, batch_size=4, verbose=0),
  }
  for name, call in entry_points.items():
    with pytest.raises(ValueError, match=r"16x16 with 1 channel but this Glow was built for "
                                         r"8x8 with 1 channel images"):
      call()
    assert not any(bool(v.numpy()) for v in model.variables if v.dtype == tf.bool), name
  with pytest.raises(ValueError, match=r"8x8 with 3 channels but this Glow was built for 8x8 "
                                       r"with 1 channel"):
    model.bits_per_dim(np.zeros((2, 8, 8, 3), np.uint8))

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8)])
  def unknown_size(images):
    return model.bits_per_dim(images)

  with pytest.raises(tf.errors.InvalidArgumentError, match="of another size but this Glow"):
    unknown_size(big)
  assert unknown_size(np.zeros((2, 8, 8, 1), np.uint8)).shape == (2,)
