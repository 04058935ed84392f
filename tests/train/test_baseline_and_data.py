"""The per-pixel baseline, the grey-level reduction and the photo-patch dataset."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfinvconv.models import Glow
from tfinvconv.train import baseline
from tfinvconv.train import data


def test_histogram_baseline_matches_a_hand_computation():
  # One pixel, 2 levels, training values [0, 0, 1] -> counts (2, 1); one pseudo-image spread
  # over the 2 bins: P(0) = (2 + 1/2) / 4, P(1) = (1 + 1/2) / 4.
  train = np.array([0, 0, 255], np.uint8).reshape(3, 1, 1, 1)
  test = np.array([0, 255], np.uint8).reshape(2, 1, 1, 1)
  want = -(math.log2(2.5 / 4) + math.log2(1.5 / 4)) / 2
  assert baseline.histogram_bits_per_dim(train, test, 2) == pytest.approx(want, abs=1e-12)


def test_histogram_baseline_is_per_pixel():
  rng = np.random.default_rng(0)
  # Pixel 0 is always 0, pixel 1 uniform over 4 levels: 0 bits + 2 bits (nearly) = ~1 bit/dim.
  train = np.zeros((4000, 1, 2, 1), np.uint8)
  train[:, 0, 1, 0] = rng.integers(0, 4, 4000) * 64
  test = train[:1000]
  assert baseline.histogram_bits_per_dim(train, test, 4) == pytest.approx(1.0, abs=0.01)


def test_digits_baseline_is_the_same_at_every_lossless_number_of_bins():
  train, test = data.digits_images()
  values = [baseline.histogram_bits_per_dim(train, test, n) for n in (17, 32, 256)]
  assert values[0] == pytest.approx(2.42, abs=0.01)
  assert max(values) - min(values) < 0.01, values


def test_17_bins_hold_the_digits_17_levels_without_loss():
  train, _ = data.digits_images()
  levels = np.unique(train)
  assert len(levels) == 17
  bins = baseline.to_bins(levels, 17)
  np.testing.assert_array_equal(bins, np.arange(17))  # one level per bin, none empty
  model = Glow((8, 8, 1), num_levels=1, depth=1, hidden_channels=4, n_bins=17)
  x = model.preprocess(levels.reshape(1, 1, 17, 1), noise=False).numpy().ravel()
  np.testing.assert_allclose(x, np.arange(17) / 17 - 0.5, atol=1e-7)  # the flow's bins agree
  assert len(np.unique(baseline.to_bins(levels, 16))) < 17  # 4 bits would merge two levels


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_bins=1), "n_bins must be an integer in 2..256"),
    (dict(n_bins=257), "n_bins must be an integer in 2..256"),
    (dict(n_bits=5, n_bins=17), "disagree"),
    (dict(n_bits=9), "n_bits must be an integer in 1..8"),
])
def test_bad_numbers_of_bins_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    Glow((8, 8, 1), num_levels=1, depth=1, hidden_channels=4, **kwargs)


@pytest.mark.parametrize("size", [16, 32])
def test_photo_patches_splits_share_no_pixel(size):
  height, width, photos = 427, 640, 2
  covered = {}
  for split in ("train", "test"):
    mask = np.zeros((photos, height, width), bool)
    for p, y, x in data.photo_patch_corners(split, size, height, width, photos):
      mask[p, y:y + size, x:x + size] = True
    covered[split] = mask
  assert not np.any(covered["train"] & covered["test"])
  assert covered["train"].sum() > 2 * covered["test"].sum() > 0


def test_photo_patches_are_crops_of_the_photos():
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images
  source = data.load_split(data.PHOTO_PATCHES, "test", 16)
  corners = data.photo_patch_corners("test", 16, 427, 640, 2)
  images = np.stack([image.numpy() for image in source.images().take(3)])
  assert images.dtype == np.uint8 and images.shape == (3, 16, 16, 3)
  for image, (p, y, x) in zip(images, corners):
    np.testing.assert_array_equal(image, photos[p][y:y + 16, x:x + 16])
  assert source.count() == len(corners) == 520
  with pytest.raises(ValueError, match="too large"):
    data.load_split(data.PHOTO_PATCHES, "train", 200)


def _epoch_batches(source, batch_size, workers, epoch, position, steps=None):
  """Each worker's batches (lists of record ids) from `position`, for `steps` global steps."""
  batches = []
  for rank in range(workers):
    stream, planned = data.epoch_pipeline(source, batch_size, workers, rank, seed=3, epoch=epoch,
                                          position=position)
    batches.append([list(b) for b in stream.take(planned if steps is None else steps)
                    .as_numpy_iterator()])
  return batches, planned


def test_an_elastic_epoch_trains_on_every_image_once_however_the_workers_change():
  """Workers come and go mid-epoch (each change restarts the streams at the committed position,
  as the elastic trainer does): the global steps read the single-worker order of the epoch in
  order, so no image is read twice or skipped, and only the tail shorter than a step is left."""
  count, batch_size = 203, 4
  source = data.ImageSource(tf.data.Dataset.range(count), tf.identity)
  alone, steps_alone = _epoch_batches(source, batch_size, 1, epoch=0, position=0)
  order = [i for batch in alone[0] for i in batch]
  assert steps_alone == count // batch_size and len(set(order)) == len(order)
  assert order != sorted(order)  # shuffled
  read, position = [], 0
  for workers, steps in ((2, 3), (3, 2), (1, 5), (2, None)):  # None: to the end of the epoch
    batches, _ = _epoch_batches(source, batch_size, workers, 0, position, steps)
    for step in range(len(batches[0])):
      read += [i for rank in range(workers) for i in batches[rank][step]]
    position += len(batches[0]) * workers * batch_size
  assert len(read) == len(set(read)) == position
  assert read == order[:position]  # every image once, in the epoch's order
  assert count - position < 2 * batch_size  # only the last partial step is left out
  next_epoch, _ = _epoch_batches(source, batch_size, 1, epoch=1, position=0)
  assert [i for b in next_epoch[0] for i in b] != order  # each epoch its own shuffle
  again, _ = _epoch_batches(source, batch_size, 1, epoch=0, position=0)
  assert again == alone  # and the same one on every worker
