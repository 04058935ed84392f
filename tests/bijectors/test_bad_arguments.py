"""Bad arguments to every bijector name the problem: channel counts (at construction, on the
first call, and at run time with validate_args), kernel sizes, corners, implementations, dtypes,
squeeze factors and event shapes; a singular kernel reaches the user as an error."""

import numpy as np
import pytest
import tensorflow as tf

from tfinvconv import bijectors as tib

CHANNEL_BIJECTORS = [tib.InvertibleShift, tib.Conv1x1, tib.ConvNxN, tib.InverseConv,
                     tib.EmergingConv, tib.ActNorm, tib.AffineCoupling]


@pytest.mark.parametrize("cls", CHANNEL_BIJECTORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("num_channels", [0, -3])
def test_non_positive_channels(cls, num_channels):
  with pytest.raises(ValueError, match="num_channels must be at least"):
    cls(num_channels)


@pytest.mark.parametrize("cls", CHANNEL_BIJECTORS, ids=lambda c: c.__name__)
def test_wrong_number_of_input_channels(cls):
  bijector = cls(4)
  with pytest.raises(ValueError, match="has 3 channels but the bijector was built for 4"):
    bijector.inverse(tf.zeros([1, 4, 4, 3]))
  with pytest.raises(ValueError, match="has 3 channels but the bijector was built for 4"):
    bijector.forward(tf.zeros([1, 4, 4, 3]))


@pytest.mark.parametrize("cls", CHANNEL_BIJECTORS, ids=lambda c: c.__name__)
def test_wrong_channels_caught_at_runtime_with_validate_args(cls):
  bijector = cls(4, validate_args=True)
  run = tf.function(lambda x: bijector.inverse(x),
                    input_signature=[tf.TensorSpec([None, 4, 4, None], tf.float32)])
  with pytest.raises(tf.errors.InvalidArgumentError, match="wrong number of channels"):
    run(tf.zeros([1, 4, 4, 3]))


def test_argument_errors_name_the_problem():
  with pytest.raises(TypeError, match="num_channels must be an int"):
    tib.InverseConv(2.5)
  with pytest.raises(ValueError, match="kernel_size must be odd"):
    tib.EmergingConv(4, kernel_size=4)
  with pytest.raises(ValueError, match="kernel_size must be at least 1"):
    tib.InverseConv(4, kernel_size=0)
  with pytest.raises(ValueError, match="kernel_size must be at most 32"):
    tib.InverseConv(4, kernel_size=33)
  with pytest.raises(ValueError, match="unknown corner 'centre'"):
    tib.InverseConv(4, corner="centre")
  with pytest.raises(ValueError, match="unknown implementation"):
    tib.InverseConv(4, implementation="numpy")
  with pytest.raises(ValueError, match="num_channels must be at least 2"):
    tib.AffineCoupling(1)
  with pytest.raises(ValueError, match="hidden_channels must be at least 1"):
    tib.AffineCoupling(4, hidden_channels=0)
  with pytest.raises(TypeError, match="float32 or float64"):
    tib.ActNorm(4, dtype=tf.int32)
  with pytest.raises(ValueError, match="factor must be at least 1"):
    tib.Squeeze(0)
  with pytest.raises(ValueError, match="height to be divisible by 2"):
    tib.Squeeze(2).inverse(tf.zeros([1, 3, 4, 1]))
  with pytest.raises(ValueError, match="channels divisible by 4"):
    tib.Squeeze(2).forward(tf.zeros([1, 2, 2, 3]))
  with pytest.raises(ValueError, match="event of shape"):
    tib.InvertibleShift(4).inverse(tf.zeros([4, 4]))


def test_singular_kernel_reaches_the_user_as_an_error():
  layer = tib.InverseConv(3, learn_diagonal=True)
  layer.log_diagonal.assign([0.0, -np.inf, 0.0])  # exp(-inf) = 0: a singular kernel
  with pytest.raises(tf.errors.InvalidArgumentError, match="singular kernel"):
    layer.inverse(tf.ones([1, 4, 4, 3]))
