"""inverse_causal_conv2d: the exact inverse of causal_conv2d, with its exact gradient.

The only module that knows two implementations exist: the compiled op (C++ on CPU, CUDA on GPU)
and the pure-TensorFlow loop in tf_solve.py. Both share one gradient rule. For x = A^{-1} y and
upstream g = dL/dx (math note, "Backward through the inverse"):

    dL/dy = A^{-T} g                      (the adjoint solve)
    dL/dK = -mask * filter_grad(x, dL/dy) (TF's Conv2DBackpropFilter on the padded x)

The adjoint solve u = A^{-T} g is itself differentiable by the same rule (dL/dg = A^{-1} u_bar,
dL/dK = -filter_grad(A^{-1} u_bar, u)), so second derivatives work too.
"""


import tensorflow as tf

from tfinvconv.ops import _loader
from tfinvconv.ops import causal_conv
from tfinvconv.ops import tf_solve

IMPLEMENTATIONS = ("auto", "custom_op", "tf")
OP_NAME = "TfInvConv>InverseCausalConv2D"

def _in_xla_context():
  try:  # Private API; if it moves, "auto" simply does not detect XLA.
    from tensorflow.python.ops import control_flow_util  # pylint: disable=g-import-not-at-top
    graph = tf.compat.v1.get_default_graph()
    return control_flow_util.GraphOrParentsInXlaContext(graph)
  except (ImportError, AttributeError):
    return False


# Why "auto" takes the pure-TF solve inside XLA (said once, as the README promises).
XLA_REASON = ("the compiled op has no XLA kernel and this is inside jit_compile; pass "
              "implementation='tf' to choose it explicitly")


def _choose(implementation):
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown implementation {implementation!r}; expected one of "
                     f"{', '.join(IMPLEMENTATIONS)}")
  if implementation == "tf":
    return "tf"
  library, reason = _loader.load_library()
  if implementation == "custom_op":
    if library is None:
      raise RuntimeError(f"implementation='custom_op' but the compiled op is unavailable: {reason}")
    return "custom_op"
  if library is None:
    _loader.warn_pure_tf(reason, stacklevel=3)
    return "tf"
  if _in_xla_context():  # compiled ops have no XLA kernel: the TF path is the one that compiles
    _loader.warn_pure_tf(XLA_REASON, stacklevel=3)
    return "tf"
  return "custom_op"


def cpu_path():
  """The instruction set the compiled CPU solve runs in this process: "baseline", "avx2" or
  "avx512" (the widest this CPU has, or TFINVCONV_CPU_PATH's choice), or the -march value of a
  TFINVCONV_MARCH build.

  Raises:
    RuntimeError: the compiled op is unavailable (says why).
    tf.errors.InvalidArgumentError: TFINVCONV_CPU_PATH names no path this build and CPU can run.
  """
  library, reason = _loader.load_library()
  if library is None:
    raise RuntimeError(f"the compiled op is unavailable: {reason}")
  with tf.device("/CPU:0"):
    return library.tf_inv_conv_cpu_path().numpy().decode()


def _solve_gradients(solve, solution, upstream, kernel, corner, adjoint):
  """Shared backward rule for both implementations (see the module docstring)."""
  k = kernel.shape[0]
  rhs_grad = solve(upstream, kernel, corner, not adjoint)
  inputs, out_backprop = (rhs_grad, solution) if adjoint else (solution, rhs_grad)
  kernel_grad = -causal_conv.masked_filter_gradient(inputs, out_backprop, k, corner)
  return rhs_grad, kernel_grad


def _custom_op_solve(rhs, kernel, corner, adjoint):
  library, _ = _loader.load_library()
  return library.tf_inv_conv_inverse_causal_conv2d(rhs, kernel, corner=corner, adjoint=adjoint)


def _register_custom_op_gradient():
  @tf.RegisterGradient(OP_NAME)
  def _gradient(op, upstream):  # pylint: disable=unused-variable
    return _solve_gradients(_custom_op_solve, op.outputs[0], upstream, op.inputs[1],
                            op.get_attr("corner").decode(), op.get_attr("adjoint"))


def _tf_solve(rhs, kernel, corner, adjoint):
  @tf.custom_gradient
  def solve_with_gradient(rhs, kernel):
    solution = tf_solve.solve(rhs, kernel, corner, adjoint)

    def grad(upstream):
      return _solve_gradients(_tf_solve, solution, upstream, kernel, corner, adjoint)

    return solution, grad

  return solve_with_gradient(rhs, kernel)


# The compiled op's wording (inverse_conv_ops.cc, SingularKernelError), so both paths read alike.
_SINGULAR = ("singular kernel: the same-pixel diagonal entry for channel {} is zero (or NaN), so "
             "the causal convolution has no inverse")


def _check_nonsingular(kernel):
  """Eagerly: raises the compiled op's error. In a graph: an assert with the same sentence
  (XLA drops asserts; there the solution is NaN, as on the GPU)."""
  if _in_xla_context():
    return tf.no_op()
  k = kernel.shape[0]
  diagonal = tf.linalg.diag_part(kernel[k - 1, k - 1])
  bad = tf.logical_not(tf.abs(diagonal) > 0)  # NaN is bad too
  first_bad = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int32)
  if tf.executing_eagerly():
    if bool(tf.reduce_any(bad)):
      raise tf.errors.InvalidArgumentError(None, None, _SINGULAR.format(int(first_bad)))
    return tf.no_op()
  return tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)),
                             [tf.strings.format(_SINGULAR, first_bad)])


def inverse_causal_conv2d(y, kernel, corner="top_left", implementation="auto", name=None):
  """Exact inverse of `causal_conv2d`: x such that causal_conv2d(x, kernel, corner) == y.

  Solved by back-substitution over anti-diagonals (H + W - 1 dependent steps, every pixel of a
  diagonal in parallel), differentiable with respect to `y` and `kernel` through the adjoint
  solve and one filter gradient (no autodiff through the loop).

  Args:
    y: [batch, height, width, channels], float32 or float64.
    kernel: [k, k, channels, channels] (HWIO), read through the same mask as `causal_conv2d`;
      the same-pixel diagonal kernel[k-1, k-1, c, c] must have no zero.
    corner: top_left, top_right, bottom_left or bottom_right.
    implementation: "custom_op" (compiled C++/CUDA), "tf" (pure TensorFlow, XLA-compatible) or
      "auto" (the compiled op when it loaded and we are not inside XLA, else "tf", with one
      warning saying why).

  Returns:
    x with the shape of y.

  Raises:
    ValueError / TypeError: bad rank, shapes, dtype, corner or implementation.
    tf.errors.InvalidArgumentError: a zero on the same-pixel diagonal (singular kernel).
  """
  with tf.name_scope(name or "inverse_causal_conv2d"):
    y, kernel = causal_conv.validate_inputs(y, kernel, corner, name_of_x="y")
    if _choose(implementation) == "custom_op":
      return _custom_op_solve(y, kernel, corner, adjoint=False)
    with tf.control_dependencies([_check_nonsingular(kernel)]):
      return _tf_solve(y, kernel, corner, adjoint=False)


_register_custom_op_gradient()
