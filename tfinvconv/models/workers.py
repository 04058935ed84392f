"""Refuses training steps whose gradients differ between Horovod workers.

Horovod averages gradients in its wrappers: `hvd.DistributedOptimizer` inside the optimizer's
`compute_gradients`, `hvd.DistributedGradientTape` inside `gradient`. Under `horovodrun` with a
plain optimizer (or one that computes gradients some other way) every worker keeps its own
gradients: the workers train different models, and `MetricAverageCallback` still prints one
averaged loss. The check costs one all-reduce of four numbers per step.

Horovod is never imported here: a process that has not imported and initialised it is not one
of several Horovod workers.
"""

import sys

import tensorflow as tf

# Averaged gradients are bitwise equal on every worker; different data gives differences of
# order one. The tolerance only leaves room for an all-reduce that is not bitwise reproducible.
_RELATIVE_TOLERANCE = 1e-6

NOT_AVERAGED = (
    "the Horovod workers hold different gradients for the same step, so each would train its "
    "own model behind averaged metrics. Average them the way Horovod's guides do: "
    "model.compile(optimizer=hvd.DistributedOptimizer(optimizer)) with "
    "horovod.tensorflow.keras, or hvd.DistributedGradientTape(tape) in a custom loop "
    "(docs/multi_gpu.md)")


def horovod_workers():
  """The `horovod.tensorflow` module when this process is one of several Horovod workers."""
  hvd = sys.modules.get("horovod.tensorflow")
  if hvd is None or not hvd.is_initialized():
    return None
  return hvd if hvd.size() > 1 else None


def check_gradients_agree(gradients):
  """An op that fails (InvalidArgumentError naming the fix) when these gradients are not the
  same on every Horovod worker; a no-op outside Horovod. Non-finite gradients pass: the
  non-finite guard of the training step handles them."""
  hvd = horovod_workers()
  gradients = [tf.convert_to_tensor(g) for g in gradients if g is not None]
  if hvd is None or not gradients:
    return tf.no_op()
  as_float64 = [tf.cast(g, tf.float64) for g in gradients]
  total = tf.add_n([tf.reduce_sum(g) for g in as_float64])
  squares = tf.add_n([tf.reduce_sum(tf.square(g)) for g in as_float64])
  # max over workers of (total, squares, -total, -squares): their max and min in one all-reduce.
  highest = hvd.allreduce(tf.stack([total, squares, -total, -squares]), op=hvd.Max,
                          name="tfinvconv_gradient_check")
  spread = highest[:2] + highest[2:]
  size = tf.abs(highest[:2]) + tf.abs(highest[2:])
  agree = tf.reduce_all(spread <= _RELATIVE_TOLERANCE * size)
  finite = tf.reduce_all(tf.math.is_finite(highest))
  return tf.debugging.Assert(tf.logical_or(agree, tf.logical_not(finite)), [NOT_AVERAGED])
