"""Mixed precision: the coupling networks compute in bfloat16 / float16, everything else float32.

Tolerances were calibrated on this CPU (numbers in the comments; deterministic seeds). CPU
TensorFlow runs float16 convolutions too, so both mixed policies are tested here.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from sklearn.datasets import load_digits

from tfinvconv import bijectors as tib
from tfinvconv.models import Glow

LOW = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}


@pytest.fixture(autouse=True)
def restore_policy():
  """Every test may set the global policy; the next test starts from the one before."""
  before = tf_keras.mixed_precision.global_policy()
  yield
  tf_keras.mixed_precision.set_global_policy(before)


@pytest.fixture(scope="module")
def digits():
  images = load_digits().images
  return np.round(images / 16.0 * 255.0).astype(np.uint8)[..., None]


def _glow(policy, **kwargs):
  """A small Glow built under `policy` (the policy must be set before building)."""
  tf_keras.mixed_precision.set_global_policy(policy)
  config = dict(num_levels=2, depth=4, hidden_channels=16, mixer="inverse_conv")
  config.update(kwargs)
  return Glow((8, 8, 1), **config)


def _randomize(model, seed, scale=0.1):
  """Random weights big enough that every coupling network matters (0.2 overflows)."""
  rng = np.random.default_rng(seed)
  for variable in model.trainable_variables:
    variable.assign(rng.normal(scale=scale, size=variable.shape))
  for module in model.submodules:
    if isinstance(module, tib.ActNorm):
      module.initialized.assign(True)


def _copy_weights(source, target):
  for a, b in zip(source.all_variables(), target.all_variables()):
    b.assign(a.numpy())


def _conv_dtypes(fn, *args):
  """The T attribute of every Conv2D op in fn's traced graph."""
  graph = tf.function(fn).get_concrete_function(*args).graph
  return [op.get_attr("T") for op in graph.get_operations() if op.type == "Conv2D"]


@pytest.mark.parametrize("policy", sorted(LOW))
def test_coupling_network_computes_in_low_precision(policy):
  tf_keras.mixed_precision.set_global_policy(policy)
  coupling = tib.AffineCoupling(4, hidden_channels=8)
  assert coupling.compute_dtype == LOW[policy]
  assert coupling.network.variables and all(
      v.dtype == tf.float32 for v in coupling.network.variables)
  x = tf.random.stateless_normal([2, 4, 4, 4], [1, 2])
  # The graph really runs the three convolutions in the low dtype (float32 if ignored).
  assert _conv_dtypes(coupling.inverse_and_log_det, x) == [LOW[policy]] * 3
  y, log_det = coupling.inverse_and_log_det(x)
  assert (y.dtype, log_det.dtype, coupling.forward(y).dtype) == (tf.float32,) * 3


def test_network_output_is_used_in_float32():
  """y_b = (x_b + shift) * exp(log_scale) and the log-det, recomputed in float64 from the
  network's own bfloat16 output, match to float32 rounding: measured 2e-7 relative error;
  bound 1e-5. The affine map and log-det done in bfloat16 err by 4e-2 and 2.5e-3 (measured)."""
  tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
  coupling = tib.AffineCoupling(4, hidden_channels=8)
  rng = np.random.default_rng(0)
  for variable in coupling.network.variables:
    variable.assign(rng.normal(scale=0.3, size=variable.shape))
  x = rng.normal(size=(3, 4, 4, 4)).astype(np.float32)
  y, log_det = coupling.inverse_and_log_det(x)
  h = coupling.network(x[..., :2]).numpy().astype(np.float64)
  assert coupling.network(x[..., :2]).dtype == tf.bfloat16
  log_scale = -np.logaddexp(0.0, -(h[..., 1::2] + 2.0))
  want_y = (x[..., 2:] + h[..., 0::2]) * np.exp(log_scale)
  np.testing.assert_allclose(y.numpy()[..., 2:], want_y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(log_det.numpy(), log_scale.sum(axis=(1, 2, 3)), rtol=1e-5)
  # Same kept half, same rounded network output: the inverse is exact to float32 rounding.
  np.testing.assert_allclose(coupling.forward(y).numpy(), x, atol=2e-6)


def test_only_the_coupling_networks_leave_float32(digits):
  model = _glow("mixed_bfloat16")
  couplings = [l for level in model.steps for l in level if isinstance(l, tib.AffineCoupling)]
  assert all(v.dtype == tf.float32 for v in model.all_variables() if v.dtype.is_floating)
  for layer in model.split_priors + [model.top_prior, model.split_priors[0].conv]:
    assert layer.compute_dtype == "float32"
  x = model.preprocess(digits[:4])
  dtypes = _conv_dtypes(model.log_prob, x)
  # 3 bfloat16 convolutions per coupling network; the rest (priors, mixers) float32.
  assert dtypes.count(tf.bfloat16) == 3 * len(couplings)
  assert set(dtypes) == {tf.bfloat16, tf.float32}
  latents = model.encode(x)
  assert model.log_prob(x).dtype == tf.float32 and all(l.dtype == tf.float32 for l in latents)
  assert model.bits_per_dim(digits[:4]).dtype == tf.float32


@pytest.mark.parametrize("policy", sorted(LOW))
def test_bits_per_dim_and_inverse_close_to_float32(policy, digits):
  """Same weights, same data, no noise. Measured (random weights, 256 digits):
  |bpd - bpd_float32| max 1.2e-3 (bfloat16) / 1.7e-4 (float16), of the mean 3e-5; bounds 5e-3
  per image and 5e-4 on the mean (~4x and ~18x). Non-zero, or the policy was ignored.

  decode(encode(x)): the network sees the same kept half on both passes only up to float32
  rounding, and when that crosses a bfloat16 rounding boundary the network output jumps by
  one low-precision step. Measured max 1.0e-3 (bfloat16) / 5.9e-4 (float16), mean 2e-6 / 4e-6, vs
  max 5e-6 in float32; bounds 4e-3 (one 8-bit bin of the [-0.5, 0.5) data) and mean 2e-5."""
  reference = _glow("float32")
  reference.initialize(digits[:256])
  _randomize(reference, seed=0)
  model = _glow(policy)
  _copy_weights(reference, model)
  want = reference.bits_per_dim(digits[:256], noise=False).numpy()
  got = model.bits_per_dim(digits[:256], noise=False).numpy()
  difference = np.abs(got - want)
  assert 1e-6 < difference.max() < 5e-3, difference.max()
  assert abs(got.mean() - want.mean()) < 5e-4
  x = model.preprocess(digits[:128], noise=False).numpy()
  error = np.abs(model.decode(model.encode(x)).numpy() - x)
  assert error.max() < 4e-3 and error.mean() < 2e-5, (error.max(), error.mean())


def test_fit_under_mixed_bfloat16(digits):
  tf_keras.utils.set_random_seed(0)
  model = _glow("mixed_bfloat16", depth=2)
  model.compile(optimizer=tf_keras.optimizers.Adam(2e-3))
  assert not isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  data = tf.data.Dataset.from_tensor_slices(digits).shuffle(2000, seed=0).batch(64).repeat()
  history = model.fit(data, steps_per_epoch=12, epochs=3, verbose=0).history
  losses = history["bits_per_dim"]
  # Measured 8.29 -> 8.00 -> 7.82 (float32: the same to 1e-4).
  assert np.all(np.isfinite(losses)) and losses[2] < losses[1] < losses[0] - 0.2, losses


def test_float16_step_scales_the_loss_and_unscales_the_gradients(digits):
  """One SGD step under mixed_float16 moves the weights as the float32 step does (measured
  relative difference 2e-4, bfloat16 1.7e-3; bound 2e-2). With the unscaling removed from
  train_step the step is 2^15 times too long (measured relative difference 3.3e4)."""
  def one_step(policy):
    tf_keras.utils.set_random_seed(0)
    model = _glow(policy, depth=2)
    model.initialize(digits[:64])
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1))
    before = [v.numpy() for v in model.trainable_variables]
    model.fit(digits[:64], batch_size=64, epochs=1, verbose=0)
    return model, [v.numpy() - b for v, b in zip(model.trainable_variables, before)]

  _, want = one_step("float32")
  model, got = one_step("mixed_float16")
  assert isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  assert float(model.optimizer.loss_scale) == 2.0 ** 15  # no overflow, so no halving
  want, got = np.concatenate([w.ravel() for w in want]), np.concatenate([g.ravel() for g in got])
  assert np.linalg.norm(want) > 0
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2


def test_an_explicit_loss_scale_optimizer_is_kept():
  model = _glow("mixed_float16", depth=1)
  optimizer = tf_keras.mixed_precision.LossScaleOptimizer(tf_keras.optimizers.Adam(),
                                                          initial_scale=8.0, dynamic=False)
  model.compile(optimizer=optimizer)
  assert model.optimizer is optimizer


def test_a_policy_the_flow_cannot_follow_is_reported():
  tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
  with pytest.warns(UserWarning, match="'mixed_bfloat16' is ignored by this float64 flow"):
    model = Glow((8, 8, 1), num_levels=1, depth=1, hidden_channels=4, dtype=tf.float64)
  assert all(v.dtype == tf.float64 for v in model.trainable_variables)
  tf_keras.mixed_precision.set_global_policy("bfloat16")  # not a mixed policy
  with pytest.warns(UserWarning, match="needs a float32 flow and a mixed policy"):
    tib.AffineCoupling(4, hidden_channels=4)
