"""Datasets for training: scikit-learn's digits and photo patches, TFDS datasets, or a folder of
images.

Everything yields uint8 images [H, W, C]; the model dequantises them itself. Nothing here ever
downloads: a dataset that is not on disk gets a message saying how to get it.

A split is an `ImageSource`: cheap undecoded records (file paths, encoded image bytes, or small
in-memory images) plus the function that decodes one. The training pipeline shuffles and skips
records and decodes only what it batches, so a resumed run passes over the data it already
consumed without decoding any of it.
"""

import dataclasses
import glob
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from tfinvconv.train import distributed

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
DIGITS_TRAIN = 1500  # of scikit-learn's 1,797 digits; the rest is the test split
SHUFFLE_BUFFER = 10_000  # records; every training stream shuffles through one of this size

# What to tell a user whose TFDS dataset is missing; {data_dir} is filled in.
_HOW_TO_GET = {
    "celeb_a_hq/256": (
        "celeb_a_hq needs a manual download: follow "
        "https://www.tensorflow.org/datasets/catalog/celeb_a_hq to build the CelebA-HQ files, "
        "put them in {data_dir}/downloads/manual, then run on a machine with internet:\n"
        "  python -c \"import tensorflow_datasets as tfds; "
        "tfds.builder('celeb_a_hq/256', data_dir='{data_dir}').download_and_prepare()\""),
}
_DEFAULT_HOW_TO_GET = (
    "prepare it on a machine with internet access:\n"
    "  python -c \"import tensorflow_datasets as tfds; "
    "tfds.builder('{name}', data_dir='{data_dir}').download_and_prepare()\"\n"
    "then copy {data_dir} here and pass --data-dir (training never downloads)")


class MissingDatasetError(ValueError):
  """The dataset is not on this machine; the message says how to get it."""


def digits_images():
  """scikit-learn's bundled 8x8 handwritten digits (values 0..16) as uint8 in [0, 255]."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  images = np.round(load_digits().images / 16.0 * 255.0).astype(np.uint8)[..., None]
  order = np.random.default_rng(0).permutation(len(images))  # fixed split
  return images[order[:DIGITS_TRAIN]], images[order[DIGITS_TRAIN:]]


PHOTO_PATCHES = "photo_patches"


def photo_patch_corners(split, image_size, height, width, photos):
  """[photo, row, column] of every crop of a split. The right quarter of every photo is the
  test region and the rest the training region, so no pixel is in both splits; training crops
  overlap by half (more data), test crops do not."""
  test_from = width * 3 // 4
  if split == "train":
    step, columns = image_size // 2, range(0, test_from - image_size + 1, max(1, image_size // 2))
  else:
    step, columns = image_size, range(test_from, width - image_size + 1, image_size)
  rows = range(0, height - image_size + 1, max(1, step))
  return np.array([(p, y, x) for p in range(photos) for y in rows for x in columns], np.int32)


def _photo_patch_split(split, image_size):
  """Square RGB crops of the two photographs scikit-learn ships (china.jpg, flower.jpg, 427 x 640
  each): natural images that need no network."""
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = np.stack(load_sample_images().images)
  count, height, width, _ = photos.shape
  if image_size > min(height, width // 4):
    raise ValueError(f"--image-size {image_size} is too large for {PHOTO_PATCHES} (at most "
                     f"{min(height, width // 4)}: the test region is a quarter of a photo)")
  corners = photo_patch_corners(split, image_size, height, width, count)
  photos = tf.constant(photos)
  return ImageSource(tf.data.Dataset.from_tensor_slices(corners),
                     lambda c: tf.slice(photos, [c[0], c[1], c[2], 0],
                                        [1, image_size, image_size, 3])[0])


# Where a dataset has no "test" split, what stands in for it (used when TFDS has no split
# information yet, e.g. under tfds.testing.mock_data).
_TEST_SPLIT = {"downsampled_imagenet/32x32": "validation",
               "downsampled_imagenet/64x64": "validation", "celeb_a_hq/256": "train"}


@dataclasses.dataclass(frozen=True)
class ImageSource:
  """A split: `records` (tf.data.Dataset of undecoded elements) and `decode` (one record ->
  uint8 image [image_size, image_size, C])."""
  records: tf.data.Dataset
  decode: Callable[[tf.Tensor], tf.Tensor]

  def images(self):
    """The decoded images, in order."""
    return self.records.map(self.decode, num_parallel_calls=tf.data.AUTOTUNE)

  def count(self):
    count = self.records.cardinality().numpy()
    if count < 0:  # unknown (e.g. TFDS under some mocks): count the records, no decoding
      count = self.records.reduce(0, lambda n, _: n + 1).numpy()
    return int(count)


def _tfds_split(name, split, data_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = os.path.expanduser(data_dir or os.path.join("~", "tensorflow_datasets"))
  builder = tfds.builder(name, data_dir=data_dir)
  available = list(builder.info.splits.keys())
  if available and split not in available:  # downsampled_imagenet has train/validation
    split = "validation" if "validation" in available else "train"
  elif not available and split == "test":
    split = _TEST_SPLIT.get(name, split)
  # Asking for the data (not builder.is_prepared()) is what tfds.testing.mock_data intercepts.
  # The images stay encoded (PNG/JPEG bytes) until the pipeline decodes the ones it uses.
  try:
    dataset = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  except AssertionError as error:  # TFDS's way of saying the files are not there
    how = _HOW_TO_GET.get(name, _DEFAULT_HOW_TO_GET).format(name=name, data_dir=data_dir)
    raise MissingDatasetError(f"dataset {name!r} is not prepared in {data_dir}; {how}") from error
  return dataset.map(lambda example: example["image"], num_parallel_calls=tf.data.AUTOTUNE)


def _decode_image(encoded, channels):
  image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
  image.set_shape([None, None, channels])
  return image


def _to_uint8(image, image_size):
  """Any image -> [image_size, image_size] uint8 by area resize, rounded (not truncated)."""
  image = tf.image.resize(image, [image_size, image_size], method="area")
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def folder_files(root, split):
  """Image files of a split: root/train and root/test, or all images of root split 90/10:
  every 10th file (in sorted order) is a test image, so every class subfolder is in both."""
  def files_in(folder):
    return sorted(f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                  if f.lower().endswith(IMAGE_EXTENSIONS))

  if os.path.isdir(os.path.join(root, "train")):
    files = files_in(os.path.join(root, "train" if split == "train" else "test"))
  else:
    everything = files_in(root)
    test = everything[9::10] if len(everything) >= 10 else everything[-1:]
    held_out = set(test)
    files = test if split == "test" else [f for f in everything if f not in held_out] or test
  if not files:
    raise MissingDatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found for split "
                              f"{split!r} under {root}")
  return files


def _folder_split(root, split, image_size, channels):
  def load(path):
    image = _decode_image(tf.io.read_file(path), channels)
    size = tf.minimum(tf.shape(image)[0], tf.shape(image)[1])  # centre square crop
    return _to_uint8(tf.image.resize_with_crop_or_pad(image, size, size), image_size)

  return ImageSource(tf.data.Dataset.from_tensor_slices(folder_files(root, split)), load)


def _folder_root(dataset):
  """The image folder a --dataset value names ("folder:PATH", or anything path-like), or None
  for digits and TFDS names."""
  if dataset.startswith("folder:"):
    return os.path.expanduser(dataset[len("folder:"):])
  if dataset.startswith(("/", "./", "../", "~")) or os.path.isdir(dataset):
    return os.path.expanduser(dataset)
  return None


def check_dataset_name(dataset):
  """A dataset given as a path must be an existing folder (TFDS names are not checked here)."""
  root = _folder_root(dataset)
  if root is not None and not os.path.isdir(root):
    raise MissingDatasetError(f"no such image folder: {root} (--dataset takes digits, a TFDS "
                              "name such as cifar10, or an existing folder of images)")


def load_split(dataset, split, image_size, channels=3, data_dir=None):
  """The ImageSource of uint8 images [image_size, image_size, C] for split "train" or "test".

  `dataset`: "digits", "photo_patches", a TFDS name (cifar10, downsampled_imagenet/32x32, ...),
  or a folder of images (an existing path, or "folder:PATH").
  """
  if dataset == "digits":
    train, test = digits_images()
    records = tf.data.Dataset.from_tensor_slices(train if split == "train" else test)
    if image_size == train.shape[1]:
      return ImageSource(records, tf.identity)
    # e.g. --image-size 16 for three levels
    return ImageSource(records, lambda image: tf.image.resize(image, [image_size, image_size],
                                                              method="nearest"))
  if dataset == PHOTO_PATCHES:
    return _photo_patch_split(split, image_size)
  root = _folder_root(dataset)
  if root is not None:
    check_dataset_name(dataset)
    return _folder_split(root, split, image_size, channels)
  return ImageSource(_tfds_split(dataset, split, data_dir),
                     lambda encoded: _to_uint8(_decode_image(encoded, channels), image_size))


def image_channels(dataset):
  return 1 if dataset == "digits" else 3


def pipeline(source, batch_size, num_shards=1, shard_index=0, training=True, seed=0,
             skip_batches=0):
  """Shard per worker, shuffle (seeded, so a resumed run sees the same order), decode, batch,
  prefetch. Training data repeats forever, in full batches.

  `skip_batches` fast-forwards a resumed run to where it was: the consumed records are skipped
  before decoding (batches never straddle a skip, since every training batch is full).
  """
  records = source.records
  if num_shards > 1:
    records = records.shard(num_shards, shard_index)
  if training:
    records = records.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()
    records = records.skip(skip_batches * batch_size)
  elif skip_batches:
    raise ValueError("skip_batches is only for the (repeated) training stream")
  images = records.map(source.decode, num_parallel_calls=tf.data.AUTOTUNE)
  images = images.batch(batch_size, drop_remainder=training)
  return images.prefetch(tf.data.AUTOTUNE)


def epoch_pipeline(source, batch_size, num_shards, shard_index, seed, epoch, position):
  """This worker's batches for the rest of epoch `epoch` of an elastic run, and their number.

  Every worker reads the same seeded shuffle of the split for the epoch; each global step
  takes the next `batch_size * num_shards` images of it, worker i the i-th `batch_size` of them.
  `position` is how many images of the epoch the steps so far took together, so a run whose
  workers come and go carries on where the last committed step ended: within an epoch every
  image is trained on at most once, and only the final part smaller than a global step is left
  out.
  """
  global_batch = batch_size * num_shards
  steps = max(0, (source.count() - position) // global_batch)
  order_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
  records = source.records.shuffle(SHUFFLE_BUFFER, seed=order_seed,
                                   reshuffle_each_iteration=False)
  records = records.skip(position).take(steps * global_batch)
  records = records.batch(batch_size).shard(num_shards, shard_index).unbatch()  # before decoding
  images = records.map(source.decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
  return images.prefetch(tf.data.AUTOTUNE), steps


class RunData:
  """A run's data as this worker sees it: both splits, its shard, the batch sizes and the step
  plan."""

  def __init__(self, config, engine):
    self.config, self.engine = config, engine
    self.channels = image_channels(config.dataset)
    load = lambda split: load_split(config.dataset, split, config.image_size, self.channels,
                                    config.data_dir or None)
    self.train_images, self.test_images = load("train"), load("test")
    self.input_batch = engine.input_batch(config.batch_size)
    self.reshard()
    self.steps_per_epoch = config.steps_per_epoch or max(
        1, self.train_images.count() // self.global_batch)
    self.total_steps = config.epochs * self.steps_per_epoch

  def reshard(self):
    """This worker's shard and seed for the engine's rank and size (again after an elastic
    membership change)."""
    engine = self.engine
    self.num_shards, self.shard_index = engine.shard()
    self.global_batch = self.config.batch_size * engine.replicas
    # Data order: Horovod shards first, then each rank shuffles its shard with its own seed;
    # tf.distribute shards batches afterwards (DATA policy): the same order everywhere.
    self.seed = (self.config.seed if engine.shared_init_batch
                 else distributed.seed_for(engine, self.config.seed))
    self.test_data = engine.distribute(pipeline(
        self.test_images, self.input_batch, self.num_shards, self.shard_index, training=False))

  def training_data(self, skip):
    """The training stream after `skip` steps' batches."""
    return self.engine.distribute(pipeline(
        self.train_images, self.input_batch, self.num_shards, self.shard_index, training=True,
        seed=self.seed, skip_batches=skip))

  def epoch_data(self, position):
    """Elastic runs: this worker's batches for the rest of the epoch at `position`, and their
    number (every worker reads one shuffle of the epoch, in global steps)."""
    return epoch_pipeline(self.train_images, self.config.batch_size, self.num_shards,
                          self.shard_index, self.config.seed, int(position.epoch.numpy()),
                          int(position.images.numpy()))

  def init_batch(self):
    """ActNorm's first batch. Horovod: each worker its own (rank 0's values are broadcast);
    tf.distribute: the same batch everywhere (the unsharded stream)."""
    shared = self.engine.shared_init_batch or self.num_shards == 1
    stream = pipeline(self.train_images, self.config.batch_size, training=True,
                      seed=self.config.seed, num_shards=1 if shared else self.num_shards,
                      shard_index=0 if shared else self.shard_index)
    return next(iter(stream))
