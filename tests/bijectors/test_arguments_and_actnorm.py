"""Bad arguments name the problem; ActNorm's data-dependent initialisation."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfinvconv import bijectors as tib

CHANNEL_BIJECTORS = [tib.InvertibleShift, tib.Conv1x1, tib.ConvNxN, tib.InverseConv,
                     tib.EmergingConv, tib.ActNorm, tib.AffineCoupling]


@pytest.mark.parametrize("cls", CHANNEL_BIJECTORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("num_channels", [0, -3])
def test_non_positive_channels(cls, num_channels):
  with pytest.raises(ValueError, match="num_channels must be at least"):
    cls(num_channels)


@pytest.mark.parametrize("cls", CHANNEL_BIJECTORS, ids=lambda c: c.__name__)
def test_wrong_number_of_input_channels(cls):
  bijector = cls(4)
  with pytest.raises(ValueError, match="has 3 channels but the bijector was built for 4"):
    bijector.inverse(tf.zeros([1, 4, 4, 3]))
  with pytest.raises(ValueError, match="has 3 channels but the bijector was built for 4"):
    bijector.forward(tf.zeros([1, 4, 4, 3]))


@pytest.mark.parametrize("cls", CHANNEL_BIJECTORS, ids=lambda c: c.__name__)
def test_wrong_channels_caught_at_runtime_with_validate_args(cls):
  bijector = cls(4, validate_args=True)
  run = tf.function(lambda x: bijector.inverse(x),
                    input_signature=[tf.TensorSpec([None, 4, 4, None], tf.float32)])
  with pytest.raises(tf.errors.InvalidArgumentError, match="wrong number of channels"):
    run(tf.zeros([1, 4, 4, 3]))


def test_argument_errors_name_the_problem():
  with pytest.raises(TypeError, match="num_channels must be an int"):
    tib.InverseConv(2.5)
  with pytest.raises(ValueError, match="kernel_size must be odd"):
    tib.EmergingConv(4, kernel_size=4)
  with pytest.raises(ValueError, match="kernel_size must be at least 1"):
    tib.InverseConv(4, kernel_size=0)
  with pytest.raises(ValueError, match="kernel_size must be at most 32"):
    tib.InverseConv(4, kernel_size=33)
  with pytest.raises(ValueError, match="unknown corner 'centre'"):
    tib.InverseConv(4, corner="centre")
  with pytest.raises(ValueError, match="unknown implementation"):
    tib.InverseConv(4, implementation="numpy")
  with pytest.raises(ValueError, match="num_channels must be at least 2"):
    tib.AffineCoupling(1)
  with pytest.raises(ValueError, match="hidden_channels must be at least 1"):
    tib.AffineCoupling(4, hidden_channels=0)
  with pytest.raises(TypeError, match="float32 or float64"):
    tib.ActNorm(4, dtype=tf.int32)
  with pytest.raises(ValueError, match="factor must be at least 1"):
    tib.Squeeze(0)
  with pytest.raises(ValueError, match="height to be divisible by 2"):
    tib.Squeeze(2).inverse(tf.zeros([1, 3, 4, 1]))
  with pytest.raises(ValueError, match="channels divisible by 4"):
    tib.Squeeze(2).forward(tf.zeros([1, 2, 2, 3]))
  with pytest.raises(ValueError, match="event of shape"):
    tib.InvertibleShift(4).inverse(tf.zeros([4, 4]))


def test_singular_kernel_reaches_the_user_as_an_error():
  layer = tib.InverseConv(3, learn_diagonal=True)
  layer.log_diagonal.assign([0.0, -np.inf, 0.0])  # exp(-inf) = 0: a singular kernel
  with pytest.raises(tf.errors.InvalidArgumentError, match="singular kernel"):
    layer.inverse(tf.ones([1, 4, 4, 3]))


def _data(seed=0, shape=(8, 4, 4, 3)):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=shape) * [1.0, 3.0, 0.2] + [0.5, -2.0, 4.0]).astype(np.float32)


def test_actnorm_initialises_on_first_inverse_only():
  layer = tib.ActNorm(3)
  x = _data()
  assert not bool(layer.initialized.numpy())
  np.testing.assert_allclose(layer.forward(tf.constant(x)).numpy(), x)  # identity before init
  z = layer.inverse(tf.constant(x)).numpy()
  assert bool(layer.initialized.numpy())
  np.testing.assert_allclose(z.reshape(-1, 3).mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(z.reshape(-1, 3).std(0), 1, atol=1e-4)
  bias, log_scale = layer.bias.numpy(), layer.log_scale.numpy()
  layer.inverse(tf.constant(_data(seed=1) * 10))  # no re-initialisation
  np.testing.assert_array_equal(layer.bias.numpy(), bias)
  np.testing.assert_array_equal(layer.log_scale.numpy(), log_scale)
  layer.initialize(tf.constant(_data(seed=1) * 10))  # explicit re-initialisation does
  assert not np.allclose(layer.bias.numpy(), bias)


def test_actnorm_initialises_inside_tf_function():
  layer = tib.ActNorm(3)
  run = tf.function(lambda x: layer.inverse(x),
                    input_signature=[tf.TensorSpec([None, 4, 4, 3], tf.float32)])
  z = run(tf.constant(_data())).numpy()
  assert bool(layer.initialized.numpy())
  np.testing.assert_allclose(z.reshape(-1, 3).mean(0), 0, atol=1e-5)
  bias = layer.bias.numpy()
  run(tf.constant(_data(seed=2)))
  np.testing.assert_array_equal(layer.bias.numpy(), bias)


def test_actnorm_statistics_average_across_workers():
  """Two 'workers' average their statistics and land exactly where one big batch would."""
  x = _data(shape=(8, 4, 4, 3))
  whole = tib.ActNorm(3)
  whole.initialize(tf.constant(x))
  workers = [tib.ActNorm(3), tib.ActNorm(3)]
  stats = [w.initial_statistics(tf.constant(part)) for w, part in zip(workers, (x[:4], x[4:]))]
  mean = (stats[0][0] + stats[1][0]) / 2
  mean_square = (stats[0][1] + stats[1][1]) / 2
  for worker in workers:
    worker.assign_statistics(mean, mean_square)
    np.testing.assert_allclose(worker.bias.numpy(), whole.bias.numpy(), atol=1e-6)
    np.testing.assert_allclose(worker.log_scale.numpy(), whole.log_scale.numpy(), atol=1e-5)
    assert bool(worker.initialized.numpy())


def test_actnorm_refuses_an_empty_batch():
  with pytest.raises(ValueError, match="empty batch"):
    tib.ActNorm(3).inverse(tf.zeros([0, 4, 4, 3]))


def test_actnorm_initialised_flag_survives_a_checkpoint(tmp_path):
  layer = tib.ActNorm(3)
  layer.inverse(tf.constant(_data()))
  path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
  fresh = tib.ActNorm(3)
  tf.train.Checkpoint(layer=fresh).restore(path).assert_consumed()
  assert bool(fresh.initialized.numpy())
  bias = fresh.bias.numpy()
  fresh.inverse(tf.constant(_data(seed=5)))
  np.testing.assert_array_equal(fresh.bias.numpy(), bias)


def test_finc_is_the_inverted_layer():
  layer = tib.InverseConv(3, 2, learn_diagonal=True)
  finc = tfp.bijectors.Invert(layer)
  x = tf.constant(_data())
  np.testing.assert_allclose(finc.inverse(x).numpy(), layer.forward(x).numpy())
