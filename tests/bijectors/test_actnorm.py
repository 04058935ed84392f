"""ActNorm's data-dependent initialisation: on the first inverse only (eagerly and inside a
tf.function), averaged across workers, never from an empty batch, and remembered in a
checkpoint."""

import numpy as np
import pytest
import tensorflow as tf

from tfinvconv import bijectors as tib


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
