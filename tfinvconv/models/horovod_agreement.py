"""Refuses training steps whose gradients or weights differ between Horovod workers.

Horovod averages gradients in its wrappers: `hvd.DistributedOptimizer` inside the optimizer's
`compute_gradients`, `hvd.DistributedGradientTape` inside `gradient`. Under `horovodrun` with a
plain optimizer (or one that computes gradients some other way) every worker keeps its own
gradients: the workers train different models, and `MetricAverageCallback` still prints one
averaged loss. Two checks, each one all-reduce of four numbers:

- `check_gradients_agree`: the gradients a step is about to apply (Glow's `train_step` and the
  custom-loop recipe); it fails at the first step that was not averaged.
- `check_weights_on_gradient`: wraps Glow's log-density, so that any gradient taken through it,
  by any tape or optimizer, first compares the model's weights. A loop that never averages (or
  never broadcast rank 0's weights) fails at the step after the weights parted.

Horovod is never imported here: a process that has not imported and initialised it is not one
of several Horovod workers.

Why the model calls these checks rather than a distribution wrapper: the guarantee is that any
loop's gradient through Glow is checked, and a user's own loop (a plain tape, `minimize`, a plain
optimizer) passes through no wrapper of ours, only through Glow's log-density. The checks cost
nothing outside Horovod and know nothing of the trainer.
"""

import contextlib
import contextvars
import sys
import weakref

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


WEIGHTS_DIFFER = (
    "the Horovod workers hold different weights for the same step, so each trains its own "
    "model behind averaged metrics. Start every worker from rank 0's weights "
    "(hvd.broadcast_variables(model.variables, root_rank=0) after model.initialize(batch) or "
    "after the first step, or BroadcastGlobalVariablesCallback(0) with fit) and average every "
    "step's gradients (hvd.DistributedGradientTape(tape) in a custom loop, "
    "hvd.DistributedOptimizer with fit; docs/multi_gpu.md)")


def check_gradients_agree(gradients):
  """An op that fails (InvalidArgumentError naming the fix) when these gradients are not the
  same on every Horovod worker; a no-op outside Horovod. Non-finite gradients pass: the
  non-finite guard of the training step handles them."""
  hvd = horovod_workers()
  gradients = [tf.convert_to_tensor(g) for g in gradients if g is not None]
  if hvd is None or not gradients:
    return tf.no_op()
  return _assert_same_everywhere(hvd, gradients, "tfinvconv_gradient_check", NOT_AVERAGED)


def _assert_same_everywhere(hvd, tensors, name, message):
  """An op that fails with `message` unless `tensors` have the same sum and sum of squares on
  every worker (non-finite ones pass)."""
  as_float64 = [tf.cast(t, tf.float64) for t in tensors]
  total = tf.add_n([tf.reduce_sum(t) for t in as_float64])
  squares = tf.add_n([tf.reduce_sum(tf.square(t)) for t in as_float64])
  # max over workers of (total, squares, -total, -squares): their max and min in one all-reduce.
  highest = hvd.allreduce(tf.stack([total, squares, -total, -squares]), op=hvd.Max, name=name)
  spread = highest[:2] + highest[2:]
  size = tf.abs(highest[:2]) + tf.abs(highest[2:])
  agree = tf.reduce_all(spread <= _RELATIVE_TOLERANCE * size)
  finite = tf.reduce_all(tf.math.is_finite(highest))
  return tf.debugging.Assert(tf.logical_or(agree, tf.logical_not(finite)), [message])


_UNCHECKED = contextvars.ContextVar("tfinvconv_weight_check_off", default=False)


@contextlib.contextmanager
def unchecked():
  """Functions traced inside carry no weight check: a SavedModel must not hold Horovod's ops
  in the gradient of its log-density, or no process without Horovod could load it."""
  token = _UNCHECKED.set(True)
  try:
    yield
  finally:
    _UNCHECKED.reset(token)


# Per model: how many gradients have been taken through its log-density in this process. (Not
# a cache to free: the gradient functions TF keeps for traced functions hold the model anyway.)
_GRADIENTS_TAKEN = weakref.WeakKeyDictionary()


def _gradients_taken(model):
  if model not in _GRADIENTS_TAKEN:
    with tf.init_scope():  # created once, outside any tf.function being traced
      _GRADIENTS_TAKEN[model] = tf.Variable(0, trainable=False, dtype=tf.int64,
                                            name="gradients_taken")
  return _GRADIENTS_TAKEN[model]


def restart_first_step(model):
  """The model's next gradient counts as its first again (exempt from the weight check). Horovod
  elastic: when the job re-forms, a joining worker has taken no gradient yet, so every worker
  must start counting again, or one would check (a collective) while the other does not."""
  if model in _GRADIENTS_TAKEN:
    _GRADIENTS_TAKEN[model].assign(0)


def check_weights_on_gradient(value, model):
  """`value` (the model's log-density) unchanged. Under Horovod, a gradient through it first
  checks that `model`'s trainable weights are the same on every worker, and fails naming the fix
  when they are not; a plain identity outside Horovod. Gradients of log-densities computed before
  the model's first gradient (its first training step, however many calls that step makes) are
  not checked: Horovod's guides broadcast rank 0's weights after the first step. Every worker
  must take its gradients together, as data-parallel training does (the check is a
  collective)."""
  hvd = horovod_workers()
  if hvd is None or _UNCHECKED.get():
    return value
  taken = _gradients_taken(model)
  exempt = tf.equal(taken.read_value(), 0)  # read now, in the forward pass

  def check():
    with tf.control_dependencies([_assert_same_everywhere(
        hvd, model.trainable_variables, "tfinvconv_weight_check", WEIGHTS_DIFFER)]):
      return tf.constant(True)  # tf.cond needs an output; the assert runs as its dependency

  @tf.custom_gradient
  def identity(x):
    def gradient(upstream):
      checked = tf.cond(exempt, lambda: tf.constant(False), check)
      with tf.control_dependencies([checked, taken.assign_add(1)]):
        return tf.identity(upstream)
    return tf.identity(x), gradient

  return identity(value)
