"""The masked ("causal") k x k convolution and the pieces its inverse shares with it.

Layout NHWC, kernel HWIO. For corner "top_left" (math in docs/math.md):

    y[b,h,w,o] = sum_{p,q<k} sum_i K[p,q,i,o] * x[b, h+p-k+1, w+q-k+1, i]   (zero outside)

Output pixel (h,w) reads pixels up to k-1 rows above and columns to the left; the same-pixel tap
K[k-1,k-1] is read through a mask that keeps only input channel <= output channel, so the map is
triangular and invertible when that tap's diagonal has no zero. The other corners are the same map
on the image flipped along H and/or W; here that is done by flipping the kernel's taps and padding
on the other side, so no data is copied.
"""

import tensorflow as tf

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
SUPPORTED_DTYPES = (tf.float32, tf.float64)
# Mirrors kMaxKernelSize in custom_ops/inverse_conv/core/inverse_conv.h.
MAX_KERNEL_SIZE = 32


def _flips(corner):
  return corner.startswith("bottom"), corner.endswith("right")


def validate_inputs(x, kernel, corner, name_of_x="x"):
  """Converts and checks arguments; raises ValueError/TypeError naming the problem."""
  if corner not in CORNERS:
    raise ValueError(f"unknown corner {corner!r}; expected one of {', '.join(CORNERS)}")
  x = tf.convert_to_tensor(x, name=name_of_x)
  kernel = tf.convert_to_tensor(kernel, name="kernel")
  for tensor, what in ((x, name_of_x), (kernel, "kernel")):
    if tensor.dtype not in SUPPORTED_DTYPES:
      raise TypeError(f"{what} has dtype {tensor.dtype.name}; expected float32 or float64")
  if x.dtype != kernel.dtype:
    raise TypeError(f"dtype mismatch: {name_of_x} is {x.dtype.name} but kernel is "
                    f"{kernel.dtype.name}")
  if x.shape.rank is not None and x.shape.rank != 4:
    raise ValueError(f"{name_of_x} must be rank 4 [batch, height, width, channels], got shape "
                     f"{x.shape}")
  if kernel.shape.rank != 4:
    raise ValueError(f"kernel must be rank 4 [k, k, channels, channels] with a known shape, got "
                     f"shape {kernel.shape}")
  k, k2, c_in, c_out = kernel.shape
  if k is None or k2 is None or c_in is None or c_out is None:
    raise ValueError(f"kernel shape must be fully known, got {kernel.shape}")
  if k != k2:
    raise ValueError(f"kernel must be square (k x k), got shape {kernel.shape}")
  if k < 1 or k > MAX_KERNEL_SIZE:
    raise ValueError(f"kernel size {k} is outside the allowed range 1..{MAX_KERNEL_SIZE}")
  if c_in != c_out:
    raise ValueError(f"kernel must be [k, k, C, C] (same input and output channels), got shape "
                     f"{kernel.shape}")
  channels = x.shape[-1] if x.shape.rank is not None else None
  if channels is not None and channels != c_in:
    raise ValueError(f"channel mismatch: {name_of_x} has {channels} channels but the kernel has "
                     f"{c_in} (shape {kernel.shape})")
  return x, kernel


def kernel_mask(kernel_size, channels, dtype):
  """1 for every entry the map reads, 0 for same-pixel entries with input channel > output."""
  k = kernel_size
  centre = tf.linalg.band_part(tf.ones([channels, channels], dtype), 0, -1)  # i <= o
  taps = tf.ones([k * k - 1, channels, channels], dtype)
  return tf.reshape(tf.concat([taps, centre[None]], axis=0), [k, k, channels, channels])


def _oriented(kernel, corner):
  """The kernel as a plain cross-correlation for `corner` (taps flipped instead of the data)."""
  flip_h, flip_w = _flips(corner)
  axes = [axis for axis, flip in ((0, flip_h), (1, flip_w)) if flip]
  return tf.reverse(kernel, axes) if axes else kernel


def _pad(x, kernel_size, corner):
  flip_h, flip_w = _flips(corner)
  n = kernel_size - 1
  rows = [0, n] if flip_h else [n, 0]
  cols = [0, n] if flip_w else [n, 0]
  return tf.pad(x, [[0, 0], rows, cols, [0, 0]])


def masked_conv(x, kernel, corner):
  """y = A x on validated tensors (the forward map, differentiable by autodiff)."""
  k, channels = kernel.shape[0], kernel.shape[2]
  masked = kernel * kernel_mask(k, channels, kernel.dtype)
  return tf.nn.conv2d(_pad(x, k, corner), _oriented(masked, corner), strides=1, padding="VALID")


def masked_filter_gradient(inputs, out_backprop, kernel_size, corner):
  """d/dK of <out_backprop, A_K inputs>, masked: TF's own filter-gradient op, no new kernel."""
  channels = inputs.shape[-1]
  grad = tf.raw_ops.Conv2DBackpropFilter(
      input=_pad(inputs, kernel_size, corner),
      filter_sizes=[kernel_size, kernel_size, channels, channels],
      out_backprop=out_backprop, strides=[1, 1, 1, 1], padding="VALID")
  return _oriented(grad, corner) * kernel_mask(kernel_size, channels, inputs.dtype)


def causal_conv2d(x, kernel, corner="top_left", name=None):
  """The masked causal k x k convolution (Inverse-Flow's sampling direction).

  Args:
    x: [batch, height, width, channels], float32 or float64.
    kernel: [k, k, channels, channels] (HWIO). Same-pixel entries with input channel > output
      channel are ignored (and get zero gradient).
    corner: which corner the receptive field points to: top_left, top_right, bottom_left,
      bottom_right.

  Returns:
    y with the shape of x.
  """
  with tf.name_scope(name or "causal_conv2d"):
    x, kernel = validate_inputs(x, kernel, corner)
    return masked_conv(x, kernel, corner)
