"""The photo-patch dataset (crops of scikit-learn's two photographs: the splits share no pixel,
the crops are the photos' own pixels) and the order of an epoch under Horovod elastic (every
image once, in the epoch's shuffle, however the workers change)."""

import numpy as np
import pytest
import tensorflow as tf

from tfinvconv.train import data


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
