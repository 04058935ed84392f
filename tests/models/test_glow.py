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


@pytest.mark.parametrize("mixer", MIXERS)
def test_fit_lowers_bits_per_dim_on_digits(mixer, digits):
  tf_keras.utils.set_random_seed(0)
  model = _tiny(mixer, depth=2, hidden_channels=16)
  model.compile(optimizer=tf_keras.optimizers.Adam(2e-3))
  data = tf.data.Dataset.from_tensor_slices(digits).shuffle(2000, seed=0).batch(64).repeat()
  history = model.fit(data, steps_per_epoch=12, epochs=3, verbose=0).history
  assert history["bits_per_dim"][-1] < history["bits_per_dim"][0] - 0.2, history
  result = model.evaluate(tf.data.Dataset.from_tensor_slices(digits[:256]).batch(64),
                          return_dict=True, verbose=0)
  assert np.isfinite(result["bits_per_dim"]) and result["bits_per_dim"] < 8


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
