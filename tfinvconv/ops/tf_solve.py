"""The causal solve in plain TensorFlow: runs on any device and under XLA.

In "skewed" coordinates z[b, h, d] = x[b, h, d - h] every anti-diagonal d = h + w of the image is
one column, and the causal convolution becomes an ordinary convolution whose taps (other than the
same pixel) reach only earlier columns: tap (p, q) reads row h + p - (k-1) of column
d + p + q - 2(k-1). So the solve is one loop over the H + W - 1 columns. Each step gathers what
the new column reads from the last 2(k-1) solved columns (one gather with a fixed index table),
applies all taps in one matmul, and solves the same-pixel triangular block by a multiply with its
inverse (folded into the matmul's weights). Points of a column outside the image are zeroed so
they never leak into real pixels. TF while-loop steps cost ~10 us per op on a CPU, so the step is
kept to a handful of ops.
"""

import tensorflow as tf


def _skew_indices(height, width):
  """Flat source index for every (h, d) of the skewed image; out-of-image points -> H*W."""
  h = tf.range(height)[:, None]
  w = tf.range(height + width - 1)[None, :] - h
  inside = (w >= 0) & (w < width)
  return tf.where(inside, h * width + w, height * width), inside


def _skewed_taps(weights, k):
  """[k * 2(k-1) * C, C]: weight of window position (row offset p, column r, input channel).

  Tap (p, q) of the image lands at column r = p + q of a window over the last 2(k-1) columns.
  The same-pixel tap (r = 2(k-1)) is not in the window.
  """
  zeros = tf.zeros_like(weights[0, 0])
  rows = [tf.stack([weights[p, r - p] if 0 <= r - p < k else zeros for r in range(2 * k - 2)])
          for p in range(k)]
  channels = weights.shape[2]
  return tf.reshape(tf.stack(rows), [k * (2 * k - 2) * channels, channels])


def _window_index(height, k):
  """[H, k * 2(k-1)] index into a flat window [2(k-1) * H columns..., one zero]: for output row
  h and window position (p, r), the element r * H + h + p - (k-1), or the zero when above row 0."""
  back = 2 * k - 2
  h = tf.range(height)[:, None, None]
  p = tf.range(k)[None, :, None]
  r = tf.range(back)[None, None, :]
  source = h + p - (k - 1)
  index = tf.where(source >= 0, r * height + source, back * height)
  return tf.reshape(index, [height, k * back])


def solve(rhs, kernel, corner, adjoint):
  """x = A^{-1} rhs (or A^{-T} rhs) for validated inputs with a static kernel shape."""
  return _solve(rhs, kernel, kernel.shape[0], kernel.shape[2], corner, adjoint)


# A graph even when called eagerly (an eager while_loop would dispatch every op from Python).
# Batch and image size may vary between calls without retracing; k and C are static.
@tf.function(autograph=False, reduce_retracing=True)
def _solve(rhs, kernel, k, channels, corner, adjoint):
  kernel = tf.ensure_shape(kernel, [k, k, channels, channels])
  flip_h, flip_w = corner.startswith("bottom"), corner.endswith("right")
  weights = kernel
  if adjoint:  # A^T: the same recurrence towards the opposite corner, channel axes swapped.
    flip_h, flip_w = not flip_h, not flip_w
    weights = tf.transpose(kernel, [0, 1, 3, 2])
  axes = [axis for axis, flip in ((1, flip_h), (2, flip_w)) if flip]
  if axes:
    rhs = tf.reverse(rhs, axes)

  shape = tf.shape(rhs)
  batch, height, width = shape[0], shape[1], shape[2]
  diagonals = height + width - 1
  dtype = rhs.dtype

  # Same pixel: y_row = x_row @ centre, centre upper (adjoint: lower) triangular in
  # [input, output] indexing. Inverted once by substitution and folded into the step:
  #   column = rhs_column @ inverse - window_values @ (taps @ inverse).
  centre = weights[k - 1, k - 1]
  centre = tf.linalg.band_part(centre, -1, 0) if adjoint else tf.linalg.band_part(centre, 0, -1)
  centre_inverse = tf.linalg.triangular_solve(centre, tf.eye(channels, dtype=dtype),
                                              lower=adjoint)

  index, inside = _skew_indices(height, width)
  flat = tf.reshape(rhs, [batch, height * width, channels])
  flat = tf.concat([flat, tf.zeros([batch, 1, channels], dtype)], axis=1) @ centre_inverse
  columns = tf.transpose(tf.gather(flat, index, axis=1), [2, 0, 1, 3])  # [D, B, H, C]
  column_inside = tf.cast(tf.transpose(inside), dtype)[:, :, None]  # [D, H, 1]
  rhs_columns = tf.TensorArray(dtype, size=diagonals).unstack(columns)
  inside_columns = tf.TensorArray(dtype, size=diagonals).unstack(column_inside)
  solved = tf.TensorArray(dtype, size=diagonals, element_shape=[None, None, channels])

  back = max(2 * k - 2, 1)  # columns a step reads (k = 1: none; keep a dummy window)
  if k > 1:
    taps = _skewed_taps(weights, k) @ centre_inverse
    window_index = _window_index(height, k)
  zero = tf.zeros([batch, 1, channels], dtype)
  window = tf.zeros([batch, back * height, channels], dtype)  # last columns, oldest first

  def step(d, window, solved):
    column = rhs_columns.read(d)
    if k > 1:
      values = tf.gather(tf.concat([window, zero], axis=1), window_index, axis=1)
      # A 2-D matmul: measurably faster here than the batched one.
      values = tf.reshape(values, [batch * height, k * back * channels])  # -1 fails for B = 0
      column -= tf.reshape(values @ taps, tf.shape(column))
    column *= inside_columns.read(d)  # before it enters the window
    if k > 1:
      window = tf.concat([window[:, height:], column], axis=1)
    return d + 1, window, solved.write(d, column)

  _, _, solved = tf.while_loop(
      lambda d, *_: d < diagonals, step, (0, window, solved),
      shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None, channels]),
                        tf.TensorShape(None)))
  skewed_solution = tf.transpose(solved.stack(), [1, 2, 0, 3])  # [B, H, D, C]

  rows = tf.range(height)[:, None]
  unskew = rows * diagonals + rows + tf.range(width)[None, :]
  x = tf.gather(tf.reshape(skewed_solution, [batch, height * diagonals, channels]), unskew,
                axis=1)
  return tf.reverse(x, axes) if axes else x
