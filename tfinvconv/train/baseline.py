"""The per-pixel histogram: the model a flow must beat to show it learned more than marginals.

Each pixel and colour gets its own distribution over the n_bins grey levels, fitted by counting
on the training split, with one pseudo-image spread uniformly over the bins (a level never seen
at a pixel keeps probability 1 / (n_bins (N + 1))). Its test bits/dim is computed exactly as the
flow's: -log2 P(test image) / (H W C) with the same reduction to n_bins levels.
"""

import numpy as np

from tfinvconv.models.glow import check_bins

MAX_IMAGES = 10_000  # per split: enough for the marginals, cheap even for ImageNet


def to_bins(images, n_bins):
  """uint8 images -> grey-level index per value, as `Glow.preprocess` reduces them."""
  return np.floor(np.asarray(images, np.float64) * (n_bins / 256.0)).astype(np.int64)


def histogram_bits_per_dim(train_images, test_images, n_bins):
  """Test bits/dim of per-pixel histograms fitted on `train_images` ([N, H, W, C] uint8)."""
  check_bins(8, n_bins)
  train_bins, test_bins = to_bins(train_images, n_bins), to_bins(test_images, n_bins)
  if train_bins.shape[1:] != test_bins.shape[1:]:
    raise ValueError(f"train images {train_bins.shape[1:]} and test images "
                     f"{test_bins.shape[1:]} differ in shape")
  counts = np.zeros(train_bins.shape[1:] + (n_bins,))
  for level in range(n_bins):
    counts[..., level] = np.sum(train_bins == level, axis=0)
  probabilities = (counts + 1.0 / n_bins) / (len(train_bins) + 1.0)
  chosen = np.take_along_axis(probabilities[None], test_bins[..., None], axis=-1)
  return float(-np.mean(np.log2(chosen)))


def source_bits_per_dim(train_source, test_source, n_bins, max_images=MAX_IMAGES):
  """`histogram_bits_per_dim` of two `train.data.ImageSource`s (at most `max_images` each, the
  first in their fixed order). Returns (bits/dim, train images used, test images used)."""
  train = _first_images(train_source, max_images)
  test = _first_images(test_source, max_images)
  return histogram_bits_per_dim(train, test, n_bins), len(train), len(test)


def _first_images(source, max_images):
  batches = source.images().take(max_images).batch(1000)
  return np.concatenate([batch.numpy() for batch in batches])
