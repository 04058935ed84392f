"""tfp.bijectors.Glow behind our Glow's small interface, for the benchmarks that compare them
(benchmarks.quality: test bits/dim; benchmarks.bench_models: times and memory)."""

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

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
    self.optimizer = None
    self._loss_tracker = tf_keras.metrics.Mean(name="bits_per_dim")

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

  def compile(self, optimizer):
    self.optimizer = optimizer

  def reset_metrics(self):
    self._loss_tracker.reset_state()

  def train_step(self, data):
    """Glow.train_step's maximum-likelihood step and outputs, written out here: tfb.Glow is a
    bijector, not a Keras model, so it has no train_step of its own for the benchmarks to run
    (the one training step in benchmarks/ that is not tfinvconv's)."""
    with tf.GradientTape() as tape:
      per_image = self.bits_per_dim(data)
      loss = tf.reduce_mean(per_image)
    variables = self.trainable_variables
    self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    self._loss_tracker.update_state(per_image)
    result = self._loss_tracker.result()
    return {"loss": result, "bits_per_dim": result}


def count(variables):
  return int(sum(np.prod(v.shape) for v in variables))
