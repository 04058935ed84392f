"""The per-pixel histogram baseline (by hand, per pixel, the same at every lossless number of
bins) and the grey-level reduction (17 bins hold the digits' 17 levels; impossible bin counts are
refused)."""

import math

import numpy as np
import pytest

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
