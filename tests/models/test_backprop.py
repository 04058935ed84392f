"""Glow's backprop modes (tfinvconv.models.backprop_modes): "checkpointed" and "reversible" give
"stored"'s gradients for every mixer and every variable, on weights that have trained, eagerly
and in a tf.function, under mixed precision; a broken rebuild or a dropped variable gradient is
caught; the rebuild check reports a step gone bad; the mode travels with the model's config.
Glow.fit with each mode runs under Horovod (tests/train/test_recipes.py) and MirroredStrategy
(tests/train/test_distributed.py)."""

import concurrent.futures

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from sklearn.datasets import load_digits

from tfinvconv.models import MIXERS
from tfinvconv.models import Glow
from tfinvconv.models import backprop_modes

# Per variable: |g - g_stored| / |g_stored| (Frobenius norms). Measured on these trained models:
# checkpointed 0 to 1e-6 (the same ops, other fusion), reversible 1e-7 to 3e-6 (the rebuilt
# inputs' rounding). A dropped or wrong gradient is off by about 1.
CHECKPOINTED_BOUND = 1e-5
REVERSIBLE_BOUND = 1e-4


@pytest.fixture(scope="module")
def digits():
  images = load_digits().images
  return np.round(images / 16.0 * 255.0).astype(np.uint8)[..., None]


def _model(mixer, backprop, **kwargs):
  return Glow((8, 8, 1), num_levels=2, depth=2, hidden_channels=8, mixer=mixer, n_bins=17,
              backprop=backprop, seed=3, **kwargs)


_TRAINED = {}


def _trained(mixer, digits, **kwargs):
  """A stored-mode model after 12 eager Adam steps at a high rate (built once per module):
  weights far from the identity initialisation (zero coupling outputs, unit ActNorm), as in a
  real run. A fit would trace a training step for each model, which takes longer than this."""
  key = (mixer, tuple(sorted(kwargs.items())), tf_keras.mixed_precision.global_policy().name)
  if key not in _TRAINED:
    model = _model(mixer, "stored", **kwargs)
    optimizer = tf_keras.optimizers.Adam(2e-2)
    for i in range(12):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model.bits_per_dim(digits[32 * i:32 * (i + 1)]))
      optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                    model.trainable_variables))
    _TRAINED[key] = model
  return _TRAINED[key]


def _copy(source, backprop, **kwargs):
  model = _model(source.mixer, backprop, **kwargs)
  for mine, theirs in zip(model.all_variables(), source.all_variables()):
    mine.assign(theirs)
  return model


def _gradients(model, images, compiled=False):
  def loss_and_gradients():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(model.bits_per_dim(images, seed=tf.constant([5, 6], tf.int64)))
    return loss, tape.gradient(loss, model.trainable_variables)
  loss, grads = (tf.function(loss_and_gradients) if compiled else loss_and_gradients)()
  assert all(g is not None for g in grads), [v.name for g, v in
                                             zip(grads, model.trainable_variables) if g is None]
  return float(loss), [g.numpy().astype(np.float64) for g in grads]


def _worst_difference(grads, reference):
  """The largest per-variable relative difference."""
  return max(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30)
             for g, r in zip(grads, reference))


def _compare(stored, images, compiled=False, **kwargs):
  """{mode: worst per-variable relative difference from stored's gradients}."""
  loss, reference = _gradients(stored, images, compiled)
  worst = {}
  for mode in ("checkpointed", "reversible"):
    model = _copy(stored, mode, **kwargs)
    mode_loss, grads = _gradients(model, images, compiled)
    assert mode_loss == pytest.approx(loss, rel=1e-6)
    worst[mode] = _worst_difference(grads, reference)
  return worst


# The quick tier compares the two mixers whose rebuilds differ most (inverse_conv inverts by its
# convolution, finc by the solve); `make test` runs every mixer.
QUICK_MIXERS = ("inverse_conv", "finc")
COMPARED_MIXERS = [m if m in QUICK_MIXERS else pytest.param(m, marks=pytest.mark.slow)
                   for m in MIXERS]


@pytest.mark.parametrize("mixer", COMPARED_MIXERS)
def test_every_mode_gives_the_stored_gradients_of_a_trained_model(mixer, digits):
  worst = _compare(_trained(mixer, digits), digits[-16:])
  print(f"{mixer}: {worst}")
  assert worst["checkpointed"] < CHECKPOINTED_BOUND, worst
  assert worst["reversible"] < REVERSIBLE_BOUND, worst


def test_in_a_tf_function_with_variational_dequantisation(digits):
  """The graph-mode gradient (what fit and compiled loops run; the eager one above differs in
  how TensorFlow builds it), with the dequantiser's variables too."""
  kwargs = {"dequantization": "variational"}
  worst = _compare(_trained("inverse_conv", digits, **kwargs), digits[-16:], compiled=True,
                   **kwargs)
  print(f"tf.function, variational: {worst}")
  assert worst["checkpointed"] < CHECKPOINTED_BOUND, worst
  assert worst["reversible"] < REVERSIBLE_BOUND, worst


def test_a_broken_rebuild_or_a_dropped_gradient_is_caught(digits, monkeypatch):
  """The comparison above has teeth: a rebuild that skips one bijector's inverse (the
  coupling's), or a step that loses one variable's gradient, is off by far more than the bound."""
  stored = _trained("inverse_conv", digits)
  images = digits[-16:]
  _, reference = _gradients(stored, images)
  rebuild = backprop_modes.rebuild_input
  monkeypatch.setattr(backprop_modes, "rebuild_input",
                      lambda step, z: rebuild(step[:-1], z))  # the coupling left out
  _, grads = _gradients(_copy(stored, "reversible"), images)
  assert _worst_difference(grads, reference) > 100 * REVERSIBLE_BOUND
  monkeypatch.setattr(backprop_modes, "rebuild_input", rebuild)

  step_gradient = backprop_modes._step_gradient  # pylint: disable=protected-access

  def losing_one(step, z_in, d_out, d_total, found):
    d_in = step_gradient(step, z_in, d_out, d_total, found)
    found.pop(step[0].trainable_variables[0].ref(), None)  # ActNorm's first variable
    return d_in
  monkeypatch.setattr(backprop_modes, "_step_gradient", losing_one)
  for mode in ("checkpointed", "reversible"):
    _, grads = _gradients(_copy(stored, mode), images)
    assert _worst_difference(grads, reference) > 0.5, mode


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_reversible_gradients_are_stored_s_to_the_policys_precision(
    policy, digits):
  """Under a mixed policy the recomputed coupling networks round their (rebuilt) inputs to
  bfloat16 / float16 again, so a rebuilt input a float32 ulp off can move the network's output
  by a bfloat16 / float16 ulp: reversible gradients are then stored's to that precision, not to
  float32's. Measured, bfloat16: 5e-7 and 2e-3 (a model trained under the policy); float16:
  1.2e-4 to 4.1e-4, on models whose own gradients at the policy differ from float32's by 1e-3 to
  9e-2. The bound: twice the policy's machine epsilon (bfloat16 1.6e-2, float16 2e-3); a lost
  or wrong gradient is off by about 1."""
  float32_stored = _trained("inverse_conv", digits)
  images = digits[-16:]
  _, float32_grads = _gradients(float32_stored, images)
  tf_keras.mixed_precision.set_global_policy(policy)
  try:
    stored = _copy(float32_stored, "stored")
    _, mixed_grads = _gradients(stored, images)
    worst = _compare(stored, images)
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")
  precision = _worst_difference(mixed_grads, float32_grads)
  print(f"{policy}: {worst}, {policy} against float32: {precision:.1e}")
  assert precision > 1e-5, "the networks did not compute at the mixed policy"
  eps = {"mixed_bfloat16": 2.0 ** -7, "mixed_float16": 2.0 ** -10}[policy]
  assert worst["checkpointed"] < CHECKPOINTED_BOUND, worst
  assert worst["reversible"] < 2 * eps, (worst, precision)


def test_the_mode_is_part_of_the_config_and_a_bad_one_is_refused(tmp_path, digits):
  model = _model("inverse_conv", "reversible")
  model.initialize(digits[:32])
  model.save(str(tmp_path / "model.keras"))
  loaded = tf_keras.models.load_model(str(tmp_path / "model.keras"))
  assert loaded.backprop == "reversible"
  assert loaded.get_config()["backprop"] == "reversible"
  np.testing.assert_array_equal(loaded.bits_per_dim(digits[:8], noise=False).numpy(),
                                model.bits_per_dim(digits[:8], noise=False).numpy())
  with pytest.raises(ValueError, match="backprop must be one of 'stored', 'checkpointed', "
                                       "'reversible', got 'recomputed'"):
    _model("inverse_conv", "recomputed")


def test_rebuild_errors_are_small_on_a_trained_model_and_large_on_a_bad_step(digits):
  model = _copy(_trained("1x1", digits), "stored")
  errors = model.rebuild_errors(digits[:16])
  assert [(level, step) for level, step, _ in errors] == [
      (level, step) for level in range(2) for step in reversed(range(2))]
  worst = max(e for _, _, e in errors)
  assert 0 < worst < 1e-5, errors
  # An ill-conditioned 1x1 convolution in the top level's last step (L of its LU form with
  # entries of 30): its inverse amplifies the rounding of its output, and the steps below
  # inherit it.
  conv1x1 = model.flow_steps(1)[-1][1]
  conv1x1.lower.assign(np.tril(np.full(conv1x1.lower.shape, 30.0, np.float32), -1))
  errors = model.rebuild_errors(digits[:16])
  assert max(e for _, _, e in errors) > backprop_modes.REBUILD_TOLERANCE, errors
  # Overflow (entries of 1e4): a rebuild that is not finite counts as infinitely wrong, so a
  # NaN can never look like the smallest error.
  conv1x1.lower.assign(np.tril(np.full(conv1x1.lower.shape, 1e4, np.float32), -1))
  assert max(e for _, _, e in model.rebuild_errors(digits[:16])) == np.inf


@pytest.mark.slow  # four fresh processes, each tracing a training step
def test_reversible_memory_stays_flat_in_depth_while_stored_grows():
  """A compiled training step's working memory (benchmarks/bench_memory.py: the step's peak
  resident set over the resident set before it, in a fresh process) at depth 1 and 4. Measured
  (64², 2 levels, width 8, batch 16): stored 16.6 -> 35.9 MB (x2.2), reversible 14.5 -> 15.0 MB
  (x1.03). Without the ordering of the backward steps (backprop_modes.run_steps), reversible
  grew as stored did."""
  from benchmarks import bench_memory  # pylint: disable=import-outside-toplevel
  configs = [(mode, depth) for mode in ("stored", "reversible") for depth in (1, 4)]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    measured = pool.map(lambda c: bench_memory.measure(c[0], c[1], 64, levels=2, width=8,
                                                       batch=16, repeats=0), configs)
    step_mb = {config: row["step_mb"] for config, row in zip(configs, measured)}
  growth = {mode: step_mb[(mode, 4)] / step_mb[(mode, 1)] for mode in ("stored", "reversible")}
  print(step_mb, growth)
  assert growth["stored"] > 1.6, step_mb
  assert growth["reversible"] < 1.25, step_mb
