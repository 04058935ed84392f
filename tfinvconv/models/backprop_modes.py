"""How Glow's backward pass finds the activations of its flow steps.

- "stored": TensorFlow keeps every activation of every step (the default).
- "checkpointed": only each step's input is kept; the backward pass recomputes the step's
  internals (its coupling network) from it, as openai/glow's gradient checkpointing does.
- "reversible": nothing inside a level is kept but its output. The backward pass walks the
  steps from the top, rebuilds each step's input from its output with the step's exact inverse
  (`forward`, the sampling direction), recomputes that step alone under a tape and passes the
  gradient down. Activation memory is then about one step per level, whatever the depth.

Both recomputing modes give `stored`'s gradients: "checkpointed" up to float rounding,
"reversible" up to the rounding the rebuilt inputs carry (`rebuild_errors` measures it).
"""

import numpy as np
import tensorflow as tf
# The eager-mode pause of gradient recording that tf.recompute_grad uses too: without it an
# outer eager tape would record, and keep, every activation inside the step anyway.
from tensorflow.python.eager import record  # pylint: disable=g-direct-tensorflow-import

from tfinvconv.bijectors import image_bijector

MODES = ("stored", "checkpointed", "reversible")
# The largest relative error of a rebuilt step input that training goes on with. Float32
# rebuilds of trained Glows are off by about 1e-6 to 1e-5; 1e-3 is a step gone ill-conditioned.
REBUILD_TOLERANCE = 1e-3


def check_mode(backprop):
  if backprop not in MODES:
    raise ValueError(f"backprop must be one of {', '.join(map(repr, MODES))}, got {backprop!r}")
  return backprop


def run_step(step, z):
  """One flow step (a list of bijectors) in the data -> latent direction: (output, log-det)."""
  total = None
  for layer in step:
    z, log_det = image_bijector.inverse_and_log_det(layer, z)
    total = log_det if total is None else total + log_det
  return z, total


def rebuild_input(step, z):
  """The step's input, rebuilt from its output by the exact inverse of each bijector. No gradient
  flows through here, and stop_gradient makes a new tensor: TFP caches a bijector's results per
  input tensor while a graph is traced, and would hand back the stored input instead."""
  z = tf.stop_gradient(z)
  for layer in reversed(step):
    z = layer.forward(z)
  return z


def run_steps(steps, z, backprop):
  """The steps of one level in order: (output, summed log-det), differentiated as `backprop`
  says. Under "stored" the caller's loop is used instead (it stays what it always was)."""
  keep_inputs = check_mode(backprop) == "checkpointed"

  @tf.custom_gradient
  def level(z):
    inputs, total = [], None
    with record.stop_recording():
      for step in steps:
        if keep_inputs:
          inputs.append(z)
        z, log_det = run_step(step, z)
        total = log_det if total is None else total + log_det
    output = z

    def gradient(d_output, d_total, variables=None):
      d_z = _zeros_if_none(d_output, output)
      d_total = _zeros_if_none(d_total, total)
      found = {}
      z = output
      for i in reversed(range(len(steps))):
        # In a graph nothing else orders the steps: without this every rebuild and recompute
        # depends only on the level's output (or a kept input) and would run at once, early,
        # holding every step's activations again.
        with tf.control_dependencies([d_z]):
          z_in = inputs[i] if keep_inputs else rebuild_input(steps[i], z)
          d_z = _step_gradient(steps[i], z_in, d_z, d_total, found)
        z = z_in
      return d_z, [found[v.ref()] if v.ref() in found else tf.zeros_like(v)
                   for v in variables or []]

    return (output, total), gradient

  return level(z)


def _step_gradient(step, z_in, d_out, d_total, found):
  """The gradient at the step's input; its variables' gradients are added to `found`.
  tf.identity: a new tensor, so that TFP's graph cache recomputes the step under this tape."""
  z_in = tf.identity(z_in)
  with tf.GradientTape() as tape:
    tape.watch(z_in)
    z_out, log_det = run_step(step, z_in)
  variables = list(tape.watched_variables())
  grads = tape.gradient([z_out, log_det], [z_in] + variables,
                        output_gradients=[d_out, d_total],
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
  for variable, grad in zip(variables, grads[1:]):
    key = variable.ref()
    found[key] = grad if key not in found else found[key] + grad
  return grads[0]


def _zeros_if_none(grad, like):
  return tf.zeros_like(like) if grad is None else grad


def rebuild_errors(steps_per_level, inputs_and_outputs):
  """For each level, the rebuilt inputs as the reversible backward pass makes them (from the
  level's output down, each from the previous rebuild) against the true ones: a list of
  (level, step, relative error) with error = max |rebuilt - true| / max(max |true|, 1e-30), and
  infinity where the rebuild is not finite."""
  errors = []
  for level, (steps, (inputs, output)) in enumerate(zip(steps_per_level, inputs_and_outputs)):
    z = output
    for i in reversed(range(len(steps))):
      z = rebuild_input(steps[i], z)
      true = np.asarray(inputs[i], np.float64)
      scale = max(float(np.max(np.abs(true))), 1e-30)
      error = float(np.max(np.abs(np.asarray(z, np.float64) - true))) / scale
      errors.append((level, i, error if np.isfinite(error) else float("inf")))
  return errors
