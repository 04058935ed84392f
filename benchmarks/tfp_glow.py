"""tfp.bijectors.Glow behind our Glow's small interface, for the benchmarks that compare them
(benchmarks.quality: test bits/dim; benchmarks.bench_models: times and memory)."""

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfinvconv.models.glow import dequantize

tfb, tfd = tfp.bijectors, tfp.distributions


class TfpGlow:
  """tfp.bijectors.Glow with the same data handling as our model (dequantisation, bits/dim).
  Its ActNorms initialise themselves from the data of its first call: make that call on a real
  batch (benchmarks.quality does)."""

  def __init__(self, image_shape, levels, depth, hidden, n_bins=256, seed=0):
    self.image_shape = tuple(image_shape)
    h, w, c = self.image_shape
    self.bijector = tfb.Glow(
        output_shape=(h, w, c), num_glow_blocks=levels, num_steps_per_block=depth,
        coupling_bijector_fn=lambda shape: tfb.GlowDefaultNetwork(shape, num_hidden=hidden),
        exit_bijector_fn=tfb.GlowDefaultExitNetwork, seed=seed)
    size = h * w * c
    self.distribution = tfd.TransformedDistribution(
        tfd.Sample(tfd.Normal(0.0, 1.0), [size]), self.bijector)
    self.num_dims = size
    self.n_bins = n_bins

  @property
  def trainable_variables(self):
    return self.bijector.trainable_variables

  def preprocess(self, images):
    return dequantize(images, self.n_bins)

  def log_prob(self, x):
    return self.distribution.log_prob(x)

  def bits_per_dim(self, images):
    log_prob = self.distribution.log_prob(self.preprocess(images))
    log_prob -= self.num_dims * math.log(self.n_bins)
    return -log_prob / (self.num_dims * math.log(2.0))

  def sample(self, n):
    return self.distribution.sample(n)


def train_step_fn(model, optimizer):
  """One compiled maximum-likelihood step of a model with `bits_per_dim` (ours or TfpGlow)."""
  @tf.function
  def step(images):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(model.bits_per_dim(images))
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss
  return step


def count(variables):
  return int(sum(np.prod(v.shape) for v in variables))
