"""Glow round-trips: `.keras` (weights, bijectors and optimizer state), refused formats, and a
SavedModel that a fresh process loads with only `import tfinvconv`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from sklearn.datasets import load_digits

from tfinvconv.models import MIXERS
from tfinvconv.models import Glow
from tfinvconv.models import export_saved_model
from tests import reference as ref


@pytest.fixture(scope="module")
def digits():
  return np.round(load_digits().images / 16.0 * 255.0).astype(np.uint8)[..., None]


def _trained(mixer, digits, steps_per_epoch=2):
  model = Glow((8, 8, 1), num_levels=2, depth=2, hidden_channels=8, mixer=mixer, seed=4)
  model.initialize(digits[:64])
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-2))
  model.fit(_batches(digits), epochs=1, steps_per_epoch=steps_per_epoch, verbose=0)
  return model


@pytest.fixture(scope="module")
def trained_1x1(digits):
  """One trained model for the tests that only try to save or load it wrongly (refused before
  anything is written or assigned)."""
  return _trained("1x1", digits, steps_per_epoch=1)


def _batches(digits):
  return tf.data.Dataset.from_tensor_slices(digits[:256]).batch(64)


def _flat(model):
  return np.concatenate([v.numpy().ravel() for v in model.all_variables()])


# `make test-quick` round-trips the library's own mixer (inverse_conv), `make test` every one.
ROUND_TRIP_MIXERS = [m if m == "inverse_conv" else pytest.param(m, marks=pytest.mark.slow)
                     for m in MIXERS]


@pytest.mark.parametrize("mixer", ROUND_TRIP_MIXERS)
def test_keras_format_round_trips_every_variable(mixer, digits, tmp_path):
  model = _trained(mixer, digits)
  x = model.preprocess(digits[:16], noise=False)
  want = model.log_prob(x).numpy()
  path = str(tmp_path / "glow.keras")
  model.save(path)
  loaded = tf_keras.models.load_model(path)
  assert isinstance(loaded, Glow) and loaded.get_config() == model.get_config()
  np.testing.assert_array_equal(loaded.log_prob(x).numpy(), want)
  np.testing.assert_array_equal(_flat(loaded), _flat(model))
  # A fresh model of the same configuration differs by far more than rounding: the check bites.
  fresh = Glow.from_config(model.get_config())
  assert np.max(np.abs(fresh.log_prob(x).numpy() - want)) > 1.0


@pytest.mark.slow  # three fits
def test_keras_format_continues_training_exactly(digits, tmp_path):
  model = _trained("inverse_conv", digits)
  path = str(tmp_path / "glow.keras")
  model.save(path)
  model.fit(_batches(digits), epochs=1, steps_per_epoch=2, verbose=0)
  loaded = tf_keras.models.load_model(path)
  assert int(loaded.optimizer.iterations.numpy()) == 2
  loaded.fit(_batches(digits), epochs=1, steps_per_epoch=2, verbose=0)
  np.testing.assert_array_equal(_flat(loaded), _flat(model))


# `make test-quick` tries one of the refused names, `make test` each.
@pytest.mark.parametrize("name", ["saved_model_dir",
                                  pytest.param("glow.h5", marks=pytest.mark.slow),
                                  pytest.param("glow.tf", marks=pytest.mark.slow)])
def test_formats_that_would_lose_variables_are_refused(name, trained_1x1, tmp_path):
  model = trained_1x1
  with pytest.raises(ValueError, match=r"\.keras.*export_saved_model"):
    model.save(str(tmp_path / name))
  assert not os.path.exists(tmp_path / name)


def test_export_refuses_what_is_not_a_glow(tmp_path):
  with pytest.raises(TypeError, match="takes a tfinvconv.models.Glow"):
    export_saved_model(tf_keras.Sequential([tf_keras.layers.Dense(1)]), str(tmp_path / "x"))
  assert not os.path.exists(tmp_path / "x")


def test_loading_variables_of_another_configuration_is_an_error(trained_1x1):
  model = trained_1x1
  store = {str(i): v.numpy() for i, v in enumerate(model.all_variables())}
  with pytest.raises(ValueError, match="another configuration"):
    model.load_own_variables(dict(list(store.items())[:-1]))
  before = _flat(model)
  last = str(len(store) - 1)
  store = {key: value + 1.0 for key, value in store.items()}  # all but the last would load
  store[last] = np.zeros((3, 3))
  with pytest.raises(ValueError, match="does not belong to this configuration"):
    model.load_own_variables(store)
  np.testing.assert_array_equal(_flat(model), before)  # refused whole: nothing was assigned


_LOAD_IN_FRESH_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf
import tfinvconv  # registers the compiled op; nothing else of ours is imported
inputs = np.load(sys.argv[2])
loaded = tf.saved_model.load(sys.argv[1])
seed = tf.constant([5, 6], tf.int64)
out = {
    "log_prob": loaded.log_prob(inputs["x"])["log_prob"].numpy().tolist(),
    "bits_per_dim": loaded.bits_per_dim(inputs["images"], seed)["bits_per_dim"].numpy().tolist(),
    "sample": loaded.sample(tf.constant(3), tf.constant(0.7), seed)["x"].numpy().tolist(),
    "signature": loaded.signatures["log_prob"](x=tf.constant(inputs["x"]))["log_prob"].numpy().tolist(),
}
print(json.dumps(out))
"""


@pytest.mark.slow  # a fresh Python process imports TensorFlow
@pytest.mark.parametrize("mixer", ["inverse_conv", "finc"])
def test_saved_model_loads_in_a_fresh_process_with_identical_numbers(mixer, digits, tmp_path):
  model = _trained(mixer, digits)
  directory = str(tmp_path / "saved")
  export_saved_model(model, directory)
  x = model.preprocess(digits[:8], noise=False).numpy()
  np.savez(tmp_path / "inputs.npz", x=x, images=digits[:8])
  here = tf.saved_model.load(directory)
  seed = tf.constant([5, 6], tf.int64)
  # The same graph in another process: identical numbers. Eager execution of the model may
  # round differently (other kernels), so it is compared with a tolerance.
  want = {"log_prob": here.log_prob(x)["log_prob"].numpy(),
          "bits_per_dim": here.bits_per_dim(digits[:8], seed)["bits_per_dim"].numpy(),
          "sample": here.sample(tf.constant(3), tf.constant(0.7), seed)["x"].numpy()}
  np.testing.assert_allclose(want["log_prob"], model.log_prob(x).numpy(), rtol=1e-5)
  np.testing.assert_allclose(want["bits_per_dim"], model.bits_per_dim(digits[:8]).numpy(),
                             atol=0.05)  # other noise, same model
  run = subprocess.run([sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, directory,
                        str(tmp_path / "inputs.npz")], capture_output=True, text=True,
                       cwd=str(tmp_path), timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  got = json.loads(run.stdout.strip().splitlines()[-1])
  for key in ("log_prob", "bits_per_dim", "sample"):
    np.testing.assert_array_equal(np.array(got[key], np.float32), want[key], err_msg=key)
  np.testing.assert_array_equal(np.array(got["signature"], np.float32), want["log_prob"])
  assert np.all(np.isfinite(want["sample"])) and np.std(want["sample"]) > 0.01

  # Images of another size are refused by the model's own sentence, naming both shapes.
  for shape in ((2, 16, 16, 1), (2, 8, 8, 3)):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"this Glow was built for 8x8 with 1 channel images.*\[8 8 1\]"):
      here.bits_per_dim(tf.zeros(shape, tf.uint8), seed)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"built for 8x8 with 1 channel"):
    here.log_prob(tf.zeros((2, 4, 4, 1)))


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def test_files_written_before_the_counters_left_the_model_still_load():
  """glow_v1.* were written by the code of commit 8933a52, whose Glow held step_counter and
  nonfinite_steps (tests/models/fixtures/make_fixtures.py), on another machine. The weights must
  read back bitwise; the outputs must equal, bitwise, those of the same model rebuilt here from
  the stored weights; against the stored outputs (another CPU, another rounding) they are
  compared within float32 rounding (tests/reference.py)."""
  from tfinvconv.guarded_training import GuardedTraining  # pylint: disable=g-import-not-at-top
  expected = np.load(os.path.join(FIXTURES, "glow_v1_expected.npz"))
  loaded = tf_keras.models.load_model(os.path.join(FIXTURES, "glow_v1.keras"))
  x = loaded.preprocess(expected["images"], noise=False)
  rebuilt = _rebuilt_from_weights(loaded.get_config(), expected["weights"], expected["images"])
  want = rebuilt.log_prob(x).numpy()
  ref.assert_close_across_machines(want, expected["log_prob"], "log_prob of the stored weights")

  def check(model):
    np.testing.assert_array_equal(_flat_trainable(model), expected["weights"])
    np.testing.assert_array_equal(model.log_prob(x).numpy(), want)

  check(loaded)
  assert int(loaded.optimizer.iterations.numpy()) == int(expected["iterations"])

  model = Glow.from_config(loaded.get_config())
  guarded = GuardedTraining(model)
  guarded.compile(optimizer=tf_keras.optimizers.Adam(1e-2))
  guarded.optimizer.build(model.trainable_variables)
  guarded.restore(os.path.join(FIXTURES, "glow_v1_ckpt-1"))
  check(model)
  assert int(guarded.counters.step_counter.numpy()) == int(expected["step_counter"]) == 2
  assert int(guarded.optimizer.iterations.numpy()) == 2
  # A fresh model differs by far more than rounding: the checks above bite.
  fresh = Glow.from_config(loaded.get_config())
  assert np.max(np.abs(fresh.log_prob(x).numpy() - want)) > 1.0


def _flat_trainable(model):
  return np.concatenate([v.numpy().ravel() for v in model.trainable_variables])


def _rebuilt_from_weights(config, flat, images):
  """A Glow of `config` whose trainable variables take `flat` (in trainable_variables' order);
  ActNorm's initialisation runs first only to mark the layers initialised."""
  model = Glow.from_config(config)
  model.initialize(images)
  offset = 0
  for variable in model.trainable_variables:
    size = int(np.prod(variable.shape))
    variable.assign(flat[offset:offset + size].reshape(variable.shape))
    offset += size
  assert offset == flat.size, (offset, flat.size)
  return model
