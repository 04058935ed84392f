"""The causal solve in plain TensorFlow: runs on any device and under XLA.

In "skewed" coordinates z[b, h, d] = x[b, h, d - h] every anti-diagonal d = h + w of the image is
one column, and the causal convolution becomes an ordinary convolution whose taps (other than the
same pixel) reach only earlier columns: tap (p, q) moves to column offset p + q - 2(k-1). So the
solve is one loop over the H + W - 1 columns; each step is one small convolution over the last
2(k-1) solved columns plus a C x C triangular solve for the same pixel. Pixels of a column that
lie outside the image are forced to zero so they never leak into real ones.
"""

import tensorflow as tf


def _skew_indices(height, width):
  """Flat source index for every (h, d) of the skewed image; out-of-image points -> H*W."""
  h = tf.range(height)[:, None]
  w = tf.range(height + width - 1)[None, :] - h
  inside = (w >= 0) & (w < width)
  return tf.where(inside, h * width + w, height * width), inside


def _skewed_kernel(weights, k):
  """[k, 2k-2, C, C] kernel of the skewed convolution, without the same-pixel tap."""
  zeros = tf.zeros_like(weights[0, 0])
  rows = []
  for p in range(k):
    rows.append(tf.stack([weights[p, r - p] if 0 <= r - p < k else zeros
                          for r in range(2 * k - 2)]))
  return tf.stack(rows)


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

  # Same pixel: y_row = x_row @ centre, with centre lower (adjoint: upper) triangular after the
  # channel swap; invert it once by substitution.
  centre = weights[k - 1, k - 1]
  centre = tf.linalg.band_part(centre, -1, 0) if adjoint else tf.linalg.band_part(centre, 0, -1)
  centre_inverse = tf.linalg.triangular_solve(centre, tf.eye(channels, dtype=rhs.dtype),
                                              lower=adjoint)

  index, inside = _skew_indices(height, width)
  flat = tf.reshape(rhs, [batch, height * width, channels])
  flat = tf.concat([flat, tf.zeros([batch, 1, channels], rhs.dtype)], axis=1)
  columns = tf.transpose(tf.gather(flat, index, axis=1), [2, 0, 1, 3])  # [D, B, H, C]
  column_inside = tf.cast(tf.transpose(inside), rhs.dtype)[:, None, :, None]  # [D, 1, H, 1]
  skewed = _skewed_kernel(weights, k) if k > 1 else None

  rhs_columns = tf.TensorArray(rhs.dtype, size=diagonals).unstack(columns)
  solved = tf.TensorArray(rhs.dtype, size=diagonals, element_shape=[None, None, channels])
  window = tf.zeros([batch, height, max(2 * k - 2, 1), channels], rhs.dtype)

  def step(d, window, solved):
    acc = rhs_columns.read(d)
    if skewed is not None:
      padded = tf.pad(window, [[0, 0], [k - 1, 0], [0, 0], [0, 0]])
      acc -= tf.nn.conv2d(padded, skewed, strides=1, padding="VALID")[:, :, 0, :]
    column = tf.reshape(tf.reshape(acc, [-1, channels]) @ centre_inverse, tf.shape(acc))
    column *= column_inside[d]
    window = tf.concat([window[:, :, 1:], column[:, :, None, :]], axis=2)
    return d + 1, window, solved.write(d, column)

  _, _, solved = tf.while_loop(lambda d, *_: d < diagonals, step, (0, window, solved))
  skewed_solution = tf.transpose(solved.stack(), [1, 2, 0, 3])  # [B, H, D, C]

  rows = tf.range(height)[:, None]
  unskew = rows * diagonals + rows + tf.range(width)[None, :]
  x = tf.gather(tf.reshape(skewed_solution, [batch, height * diagonals, channels]), unskew,
                axis=1)
  return tf.reverse(x, axes) if axes else x
