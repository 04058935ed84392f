"""What the four recipes share: the data (scikit-learn's digits, offline), the model and the
report each worker prints. Sizes are tiny so that the tests run them in seconds; a real run
takes tfinvconv/train/presets.py's values."""

import json
import sys

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

from tfinvconv.models import Glow

GLOBAL_BATCH = 32
STEPS = 6


def digits():
  """1,797 8x8 digits as uint8 [N, 8, 8, 1]."""
  return np.round(load_digits().images / 16.0 * 255.0).astype(np.uint8)[..., None]


def worker_batches(rank, size):
  """This worker's share of every global batch (Horovod: each process reads its own shard)."""
  return (tf.data.Dataset.from_tensor_slices(digits())
          .shard(size, rank)
          .batch(GLOBAL_BATCH // size, drop_remainder=True).repeat())


def make_glow():
  return Glow((8, 8, 1), num_levels=2, depth=1, hidden_channels=8, mixer="inverse_conv",
              n_bins=17, seed=0)


def report(model, rank):
  """One line per worker: its rank and a checksum of its trainable weights (ActNorm's
  included)."""
  weights = np.concatenate([np.ravel(v.numpy()).astype(np.float64)
                            for v in model.trainable_variables])
  test_images = digits()[-64:]
  print("REPORT " + json.dumps({
      "rank": rank, "sum": float(weights.sum()), "sum_of_squares": float(np.square(weights).sum()),
      "test_bits_per_dim": float(np.mean(model.bits_per_dim(test_images, noise=False)))}),
        file=sys.stdout, flush=True)
