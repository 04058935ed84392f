"""The guarded training step of long runs, for `fit` on any tfinvconv flow model.

`Glow.train_step` is a plain maximum-likelihood step. Long runs want three things more, and
`GuardedTraining(model)` adds them around the model without changing it:

- a step whose loss or gradients are not finite is skipped (weights and optimizer untouched)
  and counted, instead of writing NaN into the weights;
- a step counter saved with the checkpoint (`checkpoint()`), from which the dequantisation noise
  is seeded, so a resumed run repeats an uninterrupted one bit for bit;
- float16 loss scaling through the model's `compile` (a LossScaleOptimizer, which skips
  non-finite steps itself and lowers its scale).

    guarded = GuardedTraining(model)
    guarded.compile(optimizer=tf_keras.optimizers.Adam(1e-3))   # compiles the model too
    guarded.fit(images, epochs=...)
    int(guarded.counters.nonfinite_steps)                      # steps skipped so far

Distribution hooks in as for the model itself: an optimizer wrapped by
`hvd.DistributedOptimizer` averages in `compute_gradients`, and under Horovod the step fails
when the workers' gradients differ (`tfinvconv.models.horovod_agreement`). Under a
tf.distribute strategy the optimizer's synchronisation cannot sit inside a conditional, so there
the replicas agree on finiteness and apply zero gradients instead (no NaN reaches the weights,
but Adam's momentum still moves them a little).
"""

import tensorflow as tf
import tf_keras

from tfinvconv.models import glow
from tfinvconv.models import horovod_agreement


class Counters(tf.Module):
  """Steps taken and non-finite steps skipped. The variable names are those of the version 1
  format, where Glow held them (tests/models/fixtures/glow_v1*), so those files restore them
  (`GuardedTraining.restore`)."""

  def __init__(self):
    super().__init__(name="counters")
    # ONLY_FIRST_REPLICA: every tf.distribute replica runs the same step, one increment each.
    counter = dict(trainable=False, dtype=tf.int64,
                   aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.step_counter = tf.Variable(0, name="step_counter", **counter)
    self.nonfinite_steps = tf.Variable(0, name="nonfinite_steps", **counter)


class GuardedTraining(tf_keras.Model):
  """Trains `model` (a tfinvconv Glow) with the guarded step; see the module docstring."""

  def __init__(self, model, name="guarded_training"):
    super().__init__(name=name, dtype=model.dtype)
    self.flow = model
    self.counters = Counters()
    self._loss_tracker = tf_keras.metrics.Mean(name="bits_per_dim")
    self.distribute_reduction_method = "first"  # the metrics are synchronised already

  def compile(self, optimizer="rmsprop", **kwargs):
    """Compiles the model (its jit and loss-scaling rules) and takes its optimizer."""
    self.flow.compile(optimizer, **kwargs)
    kwargs.setdefault("jit_compile", False)
    super().compile(self.flow.optimizer, **kwargs)

  def call(self, images, training=False):
    return self.flow(images, training=training)

  def train_step(self, data):
    images = glow.Glow._images(data)  # pylint: disable=protected-access
    per_image, grads_and_vars = self.flow.gradients(images, self.counters.step_counter)
    checks = [tf.reduce_all(tf.math.is_finite(g)) for g, _ in grads_and_vars]
    if horovod_agreement.horovod_workers() is None:  # averaged gradients alone decide, alike everywhere
      checks.append(tf.math.is_finite(tf.reduce_mean(per_image)))
    finite = self._agreed(tf.reduce_all(checks))
    skipped = self._apply_if_finite(self.optimizer, grads_and_vars, finite)
    self.counters.nonfinite_steps.assign_add(skipped)
    self.counters.step_counter.assign_add(1)
    usable = tf.logical_and(finite, tf.math.is_finite(per_image))
    self._loss_tracker.update_state(tf.where(usable, per_image, tf.zeros_like(per_image)),
                                    sample_weight=tf.cast(usable, per_image.dtype))
    result = self._loss_tracker.result()
    return {"loss": result, "bits_per_dim": result,
            "nonfinite_steps": tf.identity(self.counters.nonfinite_steps)}

  @staticmethod
  def _agreed(finite):
    """Finite on every tf.distribute replica (each replica sees its own batch)."""
    if glow.replicas_in_sync() == 1:
      return finite
    bad = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    return tf.equal(bad, 0.0)

  @staticmethod
  def _apply_if_finite(optimizer, grads_and_vars, finite):
    """Applies the step when finite; returns 1 for a skipped step, else 0."""
    skipped = 1 - tf.cast(finite, tf.int64)
    if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
      optimizer.apply_gradients(grads_and_vars)  # skips a non-finite step and lowers its scale
      return skipped
    if glow.replicas_in_sync() > 1:  # no conditional around the optimizer's merge_call
      optimizer.apply_gradients([(tf.where(finite, g, tf.zeros_like(g)), v)
                                 for g, v in grads_and_vars])
      return skipped

    def apply():
      optimizer.apply_gradients(grads_and_vars)
      return tf.constant(0, tf.int64)

    return tf.cond(finite, apply, lambda: tf.constant(1, tf.int64))

  def test_step(self, data):
    # Per image, so the result is the mean over images (a short last batch weighs less).
    self._loss_tracker.update_state(self.flow.bits_per_dim(glow.Glow._images(data)))  # pylint: disable=protected-access
    result = self._loss_tracker.result()
    return {"loss": result, "bits_per_dim": result}

  @property
  def metrics(self):
    return [self._loss_tracker]

  def checkpoint(self, **more):
    """A tf.train.Checkpoint of everything a resumed run needs: model, optimizer, counters, and
    `more` objects of the run (an elastic run's data position)."""
    return tf.train.Checkpoint(model=self.flow, optimizer=self.optimizer,
                               counters=self.counters, **more)

  def restore(self, prefix, **more):
    """Restores `checkpoint(**more)` from `prefix`, checking every object matched. Version 1
    checkpoints (Glow held the counters) keep them under model/: read from there."""
    names = [name for name, _ in tf.train.list_variables(prefix)]
    if any(name.startswith("counters/") for name in names):
      self.checkpoint(**more).restore(prefix).assert_existing_objects_matched()
      return
    tf.train.Checkpoint(model=self.flow, optimizer=self.optimizer).restore(
        prefix).assert_existing_objects_matched()
    tf.train.Checkpoint(model=self.counters).restore(prefix).assert_existing_objects_matched()
