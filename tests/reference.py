"""Independent float64 references written from the math, in NumPy: no tfinvconv code inside."""

import numpy as np

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def _flip_axes(corner):
  return tuple(axis for axis, flip in ((1, corner.startswith("bottom")),
                                       (2, corner.endswith("right"))) if flip)


def causal_conv(x, kernel, corner="top_left"):
  """y[b,h,w,o] = sum_{p,q,i} M*K[p,q,i,o] x[b,h+p-k+1,w+q-k+1,i] in the corner's frame."""
  k, c = kernel.shape[0], kernel.shape[2]
  kernel = kernel.copy()
  kernel[k - 1, k - 1] = np.triu(kernel[k - 1, k - 1])  # keep input <= output
  axes = _flip_axes(corner)
  x = np.flip(x, axes) if axes else x
  b, h, w, _ = x.shape
  padded = np.zeros((b, h + k - 1, w + k - 1, c))
  padded[:, k - 1:, k - 1:] = x
  y = np.zeros((b, h, w, c))
  for p in range(k):
    for q in range(k):
      # tensordot: one BLAS product (einsum's own loop made dense probing the suite's cost)
      y += np.tensordot(padded[:, p:p + h, q:q + w], kernel[p, q], axes=1)
  return np.flip(y, axes) if axes else y


def dense_matrix(fn, image_shape):
  """The matrix of a linear map on single images, built by probing with basis images."""
  n = int(np.prod(image_shape))
  basis = np.eye(n).reshape((n,) + tuple(image_shape))
  return np.asarray(fn(basis)).reshape(n, n).T  # column j = fn(e_j)


def random_kernel(rng, k, c, unit_diagonal):
  """A kernel whose masked entries hold junk (they must be ignored), diagonal away from zero."""
  kernel = rng.normal(scale=0.3 / max(1, k), size=(k, k, c, c))
  diag = np.ones(c) if unit_diagonal else rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)
  centre = kernel[k - 1, k - 1]
  np.fill_diagonal(centre, diag)
  return kernel


# Float32 numbers computed on another machine (another CPU, another of the op's dispatch paths,
# another oneDNN kernel) agree with ours only up to rounding: summation order and FMA contraction
# differ. Each rounding costs at most half a unit in the last place (eps32 = 2^-23), and a
# log-density or a loss goes through some tens to hundreds of them, so stored numbers are compared
# to within 128 eps32 (the last 7 of float32's 24 significand bits) of their largest magnitude.
# Bitwise comparisons stay for files read back and for two computations in one process.
FLOAT32_ACROSS_MACHINES = 128 * float(np.finfo(np.float32).eps)


def assert_close_across_machines(actual, stored, what="", rtol=FLOAT32_ACROSS_MACHINES):
  """`actual` (float32, computed here) against `stored` (computed elsewhere), relative to the
  stored numbers' largest magnitude."""
  actual, stored = np.asarray(actual, np.float64), np.asarray(stored, np.float64)
  assert actual.shape == stored.shape, (what, actual.shape, stored.shape)
  scale = max(float(np.max(np.abs(stored))), np.finfo(np.float32).tiny)
  error = float(np.max(np.abs(actual - stored))) / scale
  assert error <= rtol, (f"{what}: relative difference {error:.2e} from the stored numbers "
                         f"exceeds float32 rounding across machines ({rtol:.1e})")
