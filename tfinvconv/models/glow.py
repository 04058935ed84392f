"""Glow: the multi-scale flow of openai/glow with a choice of invertible convolution."""

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfinvconv import bijectors as tib
from tfinvconv.bijectors import image_bijector
from tfinvconv.models import backprop_modes
from tfinvconv.models import horovod_agreement
from tfinvconv.models import priors
from tfinvconv.models.dequantization import VariationalDequantizer

_LossScaleOptimizer = tf_keras.mixed_precision.LossScaleOptimizer
MIXERS = ("1x1", "nxn", "inverse_conv", "finc", "emerging")
COUPLINGS = ("affine", "additive")
DEQUANTIZATIONS = ("uniform", "variational")
BACKPROPS = backprop_modes.MODES


def stateless_seed(seed):
  """The one seed convention of Glow's random functions (sample, bits_per_dim, preprocess and
  the exported SavedModel): None draws fresh noise; otherwise the noise is stateless, the same
  seed giving the same numbers in every process. The seed is TF's stateless seed, two integers
  (a list, tuple or int tensor of shape [2]); an int s is the same as [s, 0]. Returns None or an
  int64 tensor of shape [2]."""
  if seed is None:
    return None
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    return tf.constant([int(seed), 0], tf.int64)
  try:
    tensor = tf.convert_to_tensor(seed)
  except (TypeError, ValueError):
    tensor = None
  if tensor is None or not tensor.dtype.is_integer or tensor.shape.rank not in (None, 0, 1) or (
      tensor.shape.rank == 1 and tensor.shape[0] not in (None, 2)):
    raise ValueError(f"seed must be an int or two ints (TF's stateless seed, shape [2]), got "
                     f"{seed!r}")
  tensor = tf.cast(tensor, tf.int64)
  if tensor.shape.rank == 0:
    return tf.stack([tensor, tf.constant(0, tf.int64)])
  return tf.ensure_shape(tensor, [2])


def dequantize(images, n_bins, dtype=tf.float32, noise=True, seed=None):
  """Glow's data handling: uint8 images (or floats in [0, 255]) reduced to `n_bins` grey levels
  (bin floor(v * n_bins / 256): for n_bins = 2**n_bits the top n_bits bits), scaled to
  [-0.5, 0.5) and spread over their bin by uniform noise. `seed` (see `stateless_seed`) makes the
  noise stateless, so a resumed run draws exactly what an uninterrupted one would."""
  seed = stateless_seed(seed)
  x = tf.floor(tf.cast(images, dtype) * (n_bins / 256.0))
  x = x / n_bins - 0.5
  if noise:
    if seed is None:
      x += tf.random.uniform(tf.shape(x), 0, 1.0 / n_bins, dtype=dtype)
    else:
      x += tf.random.stateless_uniform(tf.shape(x), seed, 0, 1.0 / n_bins, dtype=dtype)
  return x


def check_bins(n_bits, n_bins):
  """The number of grey levels: `n_bins` (2..256) if given, else 2**n_bits (n_bits in 1..8)."""
  if not (isinstance(n_bits, int) and 1 <= n_bits <= 8):
    raise ValueError(f"n_bits must be an integer in 1..8, got {n_bits!r}")
  if n_bins is None:
    return 2 ** n_bits
  if not (isinstance(n_bins, int) and 2 <= n_bins <= 256):
    raise ValueError(f"n_bins must be an integer in 2..256, got {n_bins!r}")
  if n_bits != 8 and n_bins != 2 ** n_bits:
    raise ValueError(f"n_bits={n_bits} and n_bins={n_bins} disagree: give one of them")
  return n_bins


def make_mixer(mixer, channels, kernel_size, implementation, dtype, seed):
  """The invertible convolution(s) of one flow step, listed in data -> latent order.

  "1x1": Glow's 1x1 convolution. "nxn": Truong et al.'s shift function + 1x1.
  "inverse_conv": 1x1, then Inverse-Flow's k x k causal convolution (solved when evaluating
  density, a plain convolution when sampling). "finc": the same layer inverted (convolution when
  evaluating, solved when sampling). "emerging": 1x1, then Hoogeboom et al.'s emerging
  convolution. The k x k layers have unit (inverse_conv, finc) or learned (emerging) diagonals.
  """
  conv1x1 = tib.Conv1x1(channels, seed=seed, dtype=dtype)
  if mixer == "1x1":
    return [conv1x1]
  if mixer == "nxn":
    return [tib.ConvNxN(channels, seed=seed, dtype=dtype)]
  if mixer == "inverse_conv":
    return [conv1x1, tib.InverseConv(channels, kernel_size, implementation=implementation,
                                     dtype=dtype)]
  if mixer == "finc":
    return [conv1x1, tfp.bijectors.Invert(tib.InverseConv(
        channels, kernel_size, implementation=implementation, dtype=dtype))]
  if mixer == "emerging":
    return [conv1x1, tib.EmergingConv(channels, kernel_size, implementation=implementation,
                                      dtype=dtype)]
  raise ValueError(f"unknown mixer {mixer!r}; choose one of {', '.join(MIXERS)}")


def replicas_in_sync():
  """Replicas whose gradients a tf.distribute optimizer sums in this step (1 outside one)."""
  context = tf.distribute.get_replica_context()
  if tf.distribute.has_strategy() and context is not None:
    return context.num_replicas_in_sync
  return 1


def compute_gradients(optimizer, loss, variables, tape):
  """`optimizer`'s own gradients of `loss` (the first half of its `minimize`)."""
  if hasattr(optimizer, "compute_gradients"):
    return optimizer.compute_gradients(loss, variables, tape=tape)
  # tf_keras' legacy optimizers only have the private half their `minimize` calls.
  return optimizer._compute_gradients(loss, variables, tape=tape)  # pylint: disable=protected-access


def _shape_text(shape):
  height, width, channels = (("?" if v is None else v) for v in shape)
  return f"{height}x{width} with {channels} channel{'' if channels == 1 else 's'}"


def _is_legacy_store(store, expected):
  """Files written before the training counters left the model end with them: the int64
  scalars `step_counter` and `nonfinite_steps`, which are dropped on loading."""
  if len(store.keys()) != expected + 2:
    return False
  extra = [store[str(expected)], store[str(expected + 1)]]
  return all(value.shape == () and value.dtype == "int64" for value in extra)


def _checked_arguments(image_shape, num_levels, depth, hidden_channels, mixer, kernel_size,
                       coupling, n_bits, n_bins, dequantization):
  """Glow's arguments checked before anything is built: the image shape as ints and the number
  of bins, or a ValueError naming the first argument no Glow can take."""
  if len(image_shape) != 3:
    raise ValueError(f"image_shape must be (height, width, channels), got {image_shape!r}")
  height, width, channels = (int(v) for v in image_shape)
  image_bijector.check_int(num_levels, "num_levels")
  image_bijector.check_int(depth, "depth")
  image_bijector.check_int(hidden_channels, "hidden_channels")
  image_bijector.check_int(channels, "the number of image channels")
  if mixer not in MIXERS:
    raise ValueError(f"unknown mixer {mixer!r}; choose one of {', '.join(MIXERS)}")
  if coupling not in COUPLINGS:
    raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(COUPLINGS)}")
  n_bins = check_bins(n_bits, n_bins)
  if dequantization not in DEQUANTIZATIONS:
    raise ValueError(f"unknown dequantization {dequantization!r}; choose one of "
                     f"{', '.join(DEQUANTIZATIONS)}")
  if mixer == "emerging" and kernel_size % 2 == 0:
    raise ValueError(f"mixer='emerging' needs an odd kernel_size (a centred receptive field), "
                     f"got {kernel_size}")
  scale = 2 ** num_levels
  for size, what in ((height, "height"), (width, "width")):
    if size % scale:
      fits = max(level for level in range(num_levels + 1) if size % 2 ** level == 0)
      raise ValueError(
          f"image {what} {size} is not divisible by 2**num_levels = {scale}: use "
          f"num_levels <= {fits} or pad/crop the images to a multiple of {scale}")
  return (height, width, channels), n_bins


@tf_keras.saving.register_keras_serializable(package="tfinvconv")
class Glow(tf_keras.Model):
  """Glow-style multi-scale flow (Kingma & Dhariwal, 2018), trainable with `model.fit`.

  Per level: squeeze, then `depth` steps of ActNorm -> mixer -> coupling; between levels half of
  the channels is split off under a learned conditional Gaussian prior (a zero-initialised
  convolution of the kept half); the last latent has a learned (`learn_top`) Gaussian prior.
  `mixer` picks the invertible convolution of each step (see `make_mixer`).

  Data: uint8 images [B, H, W, C] in [0, 255] are reduced to `n_bins` grey levels (default
  2**n_bits; e.g. 17 for data with 17 levels, so that no bin is empty), scaled to [-0.5, 0.5)
  and dequantised with uniform noise of one bin, or (`dequantization="variational"`) with noise
  from a learned q(u | x) whose log-density the bound subtracts (docs/quality.md);
  `bits_per_dim(images)` accounts for the bin width, so the numbers compare with the papers'.
  `log_prob(x)`, `encode(x)`, `decode(latents)` and `sample(n)` work on the continuous scaled
  data x. The latents are the standardised noises
  of every prior (finest level first), so `sample(n, temperature)` is `decode` of scaled
  standard normal noise and `decode(encode(x))` reconstructs x exactly.

  tf_keras: `compile(optimizer)` then `fit(dataset of images)` minimises bits/dim;
  `evaluate` reports it. ActNorm layers initialise from the first real batch (or call
  `initialize(images)`); their `initialized` flags are saved with the weights, so a second
  `fit` or loaded weights never re-initialise. Models whose mixer uses the compiled op compile
  with `jit_compile=False` (the op has no XLA kernel); pass `implementation="tf"` for XLA.

  Mixed precision: build the model under `tf_keras.mixed_precision.set_global_policy(
  "mixed_bfloat16")` (or "mixed_float16"): the coupling networks compute in that dtype, all
  else (variables, invertible convolutions, actnorm, priors, log-dets) stays float32; for
  float16 `compile` wraps the optimizer in a LossScaleOptimizer, which scales the loss in its
  `compute_gradients`.

  Training: `train_step` is a plain maximum-likelihood step through the optimizer's own
  gradient API, so Horovod's `DistributedOptimizer` and tf.distribute hook in as their guides
  say (docs/multi_gpu.md); under Horovod it refuses gradients that differ between workers, and
  any gradient through its log-density, in any loop, refuses weights that differ between them
  (`tfinvconv.models.horovod_agreement`).
  Non-finite skips and step counters for exact resume are
  `tfinvconv.guarded_training.GuardedTraining`.
  Images must have the model's `image_shape`; every entry point refuses other sizes.

  Memory (`backprop`): "stored" keeps every activation for the backward pass; "checkpointed"
  keeps each flow step's input and recomputes the step in the backward pass (the gradients of
  "stored" up to rounding); "reversible" keeps only each level's output and rebuilds every
  step's input from its output with the step's exact inverse (`tfinvconv.models.backprop_modes`):
  activation memory then stays flat in depth, and `rebuild_errors(images)` says how exactly the
  inputs were rebuilt. ActNorm's initialisation always runs the stored way.

  Saving: `save("model.keras")` / `tf_keras.models.load_model` (every variable, the bijectors'
  included), `save_weights` / `tf.train.Checkpoint`, or `tfinvconv.models.export_saved_model`
  for a SavedModel with `log_prob`, `bits_per_dim` and `sample` signatures. Other formats are
  refused with a message (they would lose the bijectors' variables).
  """

  def __init__(self, image_shape, num_levels=3, depth=32, hidden_channels=512,
               mixer="inverse_conv", kernel_size=3, coupling="affine", learn_top=True,
               n_bits=8, dtype=tf.float32, implementation="auto", seed=0, name="glow",
               n_bins=None, dequantization="uniform", backprop="stored"):
    dtype = image_bijector.check_dtype(dtype)
    super().__init__(name=name, dtype=dtype.name)
    image_shape, n_bins = _checked_arguments(image_shape, num_levels, depth, hidden_channels,
                                             mixer, kernel_size, coupling, n_bits, n_bins,
                                             dequantization)
    self._config = dict(image_shape=image_shape, num_levels=num_levels,
                        depth=depth, hidden_channels=hidden_channels, mixer=mixer,
                        kernel_size=kernel_size, coupling=coupling, learn_top=learn_top,
                        n_bits=n_bits, dtype=dtype.name, implementation=implementation,
                        seed=seed, name=name, n_bins=n_bins, dequantization=dequantization,
                        backprop=backprop_modes.check_mode(backprop))
    self.backprop = backprop
    self.image_shape = image_shape
    self.num_levels, self.depth = num_levels, depth
    self.n_bins = n_bins
    self.mixer, self.coupling, self.kernel_size = mixer, coupling, kernel_size
    self.implementation = implementation
    self._flow_dtype = dtype
    self._build_flow(hidden_channels, learn_top, seed, dequantization)
    self.num_dims = int(np.prod(image_shape))
    self._loss_tracker = tf_keras.metrics.Mean(name="bits_per_dim")
    self.noise_seed = seed
    # train/test_step report synchronised metrics: take one replica's, not Keras' sum.
    self.distribute_reduction_method = "first"
    self.built = True  # every weight exists already (count_params, save_weights before fit)

  def _build_flow(self, hidden_channels, learn_top, seed, dequantization):
    """The levels (squeeze, `depth` steps of ActNorm, mixer and coupling, a split prior), the top
    prior, and the variational dequantiser if asked for."""
    dtype, (height, width, channels) = self._flow_dtype, self.image_shape
    self.squeezes, self.steps, self.split_priors, self.latent_shapes = [], [], [], []
    h, w, c = height, width, channels
    layer_seed = seed
    for level in range(self.num_levels):
      h, w, c = h // 2, w // 2, c * 4
      self.squeezes.append(tib.Squeeze(2))
      level_steps = []
      for _ in range(self.depth):
        level_steps.append(tib.ActNorm(c, dtype=dtype))
        level_steps.extend(make_mixer(self.mixer, c, self.kernel_size, self.implementation,
                                      dtype, layer_seed))
        level_steps.append(tib.AffineCoupling(c, hidden_channels,
                                              additive=self.coupling == "additive", dtype=dtype))
        layer_seed += 1
      self.steps.append(level_steps)
      if level < self.num_levels - 1:
        kept = c // 2
        self.split_priors.append(priors.SplitPrior(kept, c - kept, dtype=dtype.name))
        self.latent_shapes.append((h, w, c - kept))
        c = kept
    self.top_prior = priors.TopPrior(c, learn_top=learn_top, dtype=dtype.name)
    self.dequantizer = None
    if dequantization == "variational":
      self.dequantizer = VariationalDequantizer(channels, dtype=dtype.name)
      self.dequantizer.build((None, height, width, channels))
    self.latent_shapes.append((h, w, c))

  # ---- the flow ----------------------------------------------------------------------------

  def _check_continuous(self, x):
    """Integer images are 0..255, not the ~[-0.5, 0.5] data the flow takes: never guess."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and tf.as_dtype(dtype).is_integer:
      raise ValueError(f"log_prob/encode take continuous scaled data, got "
                       f"{tf.as_dtype(dtype).name} images: call model.preprocess(images) "
                       "first, or use model.bits_per_dim(images)")

  def _checked_shape(self, x, what):
    """x, refused (naming both shapes) unless it is [..., H, W, C] of the model's
    image_shape: other sizes would run, and be scored per the model's H * W * C dimensions."""
    shape = x.shape if hasattr(x, "shape") else np.shape(x)
    shape = tf.TensorShape(shape)
    want = self.image_shape
    if shape.rank is not None and shape.rank < 3:
      raise ValueError(f"{what} must be a batch [batch, height, width, channels] of "
                       f"{_shape_text(want)} images, got shape {shape.as_list()}")
    got = tuple(shape[-3:]) if shape.rank is not None else (None,) * 3
    message = (f"{what} are {{}} but this Glow was built for {_shape_text(want)} images "
               f"(image_shape={want}): resize or crop the images, or build a model with their "
               "image_shape")
    if any(g is not None and g != w for g, w in zip(got, want)):
      raise ValueError(message.format(_shape_text(got)))
    if None in got:  # known only when the graph runs
      check = tf.debugging.assert_equal(tf.shape(x)[-3:], tf.constant(want, tf.int32),
                                        message=message.format("of another size"))
      with tf.control_dependencies([check]):
        x = tf.identity(x)
      batch = shape[:-3] if shape.rank is not None else tf.TensorShape([None])
      x = tf.ensure_shape(x, batch.concatenate(want))  # the layers need static sizes
    return x

  def _data_to_latent(self, x, initialize=False):
    """Returns (latents, log_prob) for continuous scaled data x."""
    self._check_continuous(x)
    x = self._checked_shape(x, "the data")
    z = tf.convert_to_tensor(x, self._flow_dtype)
    total = tf.zeros(tf.shape(z)[:-3], self._flow_dtype)
    latents = []
    for level in range(self.num_levels):
      z = self.squeezes[level].inverse(z)
      if self.backprop == "stored" or initialize:
        for layer in self.steps[level]:
          if initialize and isinstance(layer, tib.ActNorm):
            layer.initialize(z)
          z, log_det = image_bijector.inverse_and_log_det(layer, z)
          total += log_det
      else:
        z, log_det = backprop_modes.run_steps(self.flow_steps(level), z, self.backprop)
        total += log_det
      if level < self.num_levels - 1:
        kept = z.shape[-1] // 2
        z, dropped = z[..., :kept], z[..., kept:]
        mean, log_scale = self.split_priors[level](z)
        total += priors.gaussian_log_prob(dropped, mean, log_scale)
        latents.append((dropped - mean) * tf.exp(-log_scale))
    mean, log_scale = self.top_prior(z)
    total += priors.gaussian_log_prob(z, mean, log_scale)
    latents.append((z - mean) * tf.exp(-log_scale))
    return latents, horovod_agreement.check_weights_on_gradient(total, self)

  def flow_steps(self, level):
    """The flow steps of a level, each a list of its bijectors (ActNorm, mixer, coupling)."""
    steps = []
    for layer in self.steps[level]:
      if isinstance(layer, tib.ActNorm):
        steps.append([])
      steps[-1].append(layer)
    return steps

  def rebuild_errors(self, images, seed=0):
    """How exactly `backprop="reversible"` rebuilds each step's input on these images: a list
    of (level, step, relative error), the rebuilds made as its backward pass makes them (each
    from the one above, from the level's output down) against the true inputs. Whatever the
    model's own `backprop`."""
    images = self._checked_shape(images, "the images")
    z = self.preprocess(images, seed=tf.constant([seed, -2], tf.int64))
    steps_per_level = [self.flow_steps(level) for level in range(self.num_levels)]
    records = []
    for level, steps in enumerate(steps_per_level):
      z = self.squeezes[level].inverse(z)
      inputs = []
      for step in steps:
        inputs.append(z.numpy())
        z = backprop_modes.run_step(step, z)[0]
      records.append((inputs, z))
      if level < self.num_levels - 1:
        z = z[..., :z.shape[-1] // 2]
    return backprop_modes.rebuild_errors(steps_per_level, records)

  def log_prob(self, x):
    """Log density of continuous scaled data x ([B, H, W, C] in about [-0.5, 0.5])."""
    return self._data_to_latent(x)[1]

  def encode(self, x):
    """Latents of x: the standardised noise of every prior, finest level first."""
    return self._data_to_latent(x)[0]

  def decode(self, latents):
    """Inverse of `encode`: continuous scaled data from the list of latents."""
    if len(latents) != self.num_levels:
      raise ValueError(f"decode needs {self.num_levels} latents (one per level), got "
                       f"{len(latents)}")
    latents = [tf.convert_to_tensor(l, self._flow_dtype) for l in latents]
    for latent, shape in zip(latents, self.latent_shapes):
      if latent.shape.rank is not None and tuple(latent.shape[1:]) != shape:
        raise ValueError(f"latent of shape {latent.shape} does not match {shape}")
    mean, log_scale = self.top_prior(latents[-1])
    z = mean + tf.exp(log_scale) * latents[-1]
    for level in reversed(range(self.num_levels)):
      if level < self.num_levels - 1:
        mean, log_scale = self.split_priors[level](z)
        z = tf.concat([z, mean + tf.exp(log_scale) * latents[level]], axis=-1)
      for layer in reversed(self.steps[level]):
        z = layer.forward(z)
      z = self.squeezes[level].forward(z)
    return z

  def sample(self, n, temperature=1.0, seed=None):
    """n samples of continuous scaled data; every prior's noise is scaled by `temperature`.
    `seed`: see `stateless_seed` (one seed per latent is split from it)."""
    seed = stateless_seed(seed)
    shapes = [tf.concat([[n], tf.constant(shape, tf.int32)], 0) for shape in self.latent_shapes]
    if seed is None:
      noise = [tf.random.normal(shape, dtype=self._flow_dtype) for shape in shapes]
    else:
      seeds = tf.random.experimental.stateless_split(seed, num=len(shapes))
      noise = [tf.random.stateless_normal(shape, seeds[i], dtype=self._flow_dtype)
               for i, shape in enumerate(shapes)]
    return self.decode([temperature * z for z in noise])

  # ---- images --------------------------------------------------------------------------------

  def preprocess(self, images, noise=True, seed=None):
    """uint8 images -> continuous scaled data (see `dequantize`)."""
    return dequantize(images, self.n_bins, self._flow_dtype, noise, seed)

  def to_images(self, x):
    """Continuous scaled data -> uint8 images: each bin's lowest value, as openai/glow (for
    n_bins = 2**n_bits, bin * 2**(8 - n_bits))."""
    bins = tf.clip_by_value(tf.floor((x + 0.5) * self.n_bins), 0, self.n_bins - 1)
    return tf.cast(tf.math.ceil(bins * (256.0 / self.n_bins)), tf.uint8)

  def bits_per_dim(self, images, noise=True, seed=None):
    """-log2 P(images) / (H W C) per image: the discrete likelihood of the n_bins bins (with
    noise, a one-sample estimate of its variational upper bound; docs/math.md)."""
    images = self._checked_shape(images, "the images")
    if self.dequantizer is None:
      log_prob = self.log_prob(self.preprocess(images, noise, seed))
    else:
      log_prob = self._variational_log_prob(images, noise, seed)
    log_prob -= self.num_dims * math.log(self.n_bins)
    return -log_prob / (self.num_dims * math.log(2.0))

  def _variational_log_prob(self, images, noise, seed):
    """log p(x + u / n_bins) - log q(u | x), u from the dequantizer (eps = 0 without noise)."""
    seed = stateless_seed(seed)
    lower = dequantize(images, self.n_bins, self._flow_dtype, noise=False)
    shape = tf.shape(lower)
    if not noise:
      eps = tf.zeros(shape, self._flow_dtype)
    elif seed is None:
      eps = tf.random.normal(shape, dtype=self._flow_dtype)
    else:
      eps = tf.random.stateless_normal(shape, seed, dtype=self._flow_dtype)
    u, log_q = self.dequantizer(lower, eps)
    return self.log_prob(lower + u / self.n_bins) - log_q

  def initialize(self, images):
    """ActNorm's data-dependent initialisation from a batch of images (always re-runs). The
    noise is seeded by `noise_seed`: workers initialising from the same batch agree."""
    seed = tf.constant([self.noise_seed, -1], tf.int64)
    self._data_to_latent(self.preprocess(images, seed=seed), initialize=True)

  # ---- tf_keras ------------------------------------------------------------------------------

  def get_config(self):
    return dict(self._config)

  @classmethod
  def from_config(cls, config):
    return cls(**config)

  # compile() is overridden (jit_compile default), so load_model needs this to compile the
  # loaded model and restore its optimizer state (Keras skips both for a custom compile()).
  def compile_from_config(self, config):
    self.compile(**tf_keras.saving.deserialize_keras_object(config))
    if self.optimizer is not None:
      self.optimizer.build(self.trainable_variables)  # slots exist: the saved ones load into them

  def all_variables(self):
    """Every variable the flow owns, bijectors' included, in construction order."""
    seen, result = set(), []
    for variable in self.variables + [v for m in self.submodules for v in m.variables]:
      if id(variable) not in seen:
        seen.add(id(variable))
        result.append(variable)
    return result

  def save_own_variables(self, store):
    # Keras' default stores only Keras weights; the bijectors are tf.Modules, so store them all.
    for i, variable in enumerate(self.all_variables()):
      store[str(i)] = variable.numpy()

  def load_own_variables(self, store):
    variables = self.all_variables()
    if _is_legacy_store(store, len(variables)):
      store = {str(i): store[str(i)] for i in range(len(variables))}
    if len(store.keys()) != len(variables):
      raise ValueError(f"the saved Glow has {len(store.keys())} variables, this one "
                       f"{len(variables)}: the file was written by another configuration or "
                       "version of tfinvconv")
    values = [store[str(i)] for i in range(len(variables))]
    for i, (variable, value) in enumerate(zip(variables, values)):  # all checked before any is set
      if tuple(value.shape) != tuple(variable.shape):
        raise ValueError(f"saved variable {i} has shape {value.shape}, {variable.name} needs "
                         f"{variable.shape}: the file does not belong to this configuration")
    for variable, value in zip(variables, values):
      variable.assign(value)

  def save(self, filepath, *args, **kwargs):
    """`.keras` only: TF's SavedModel and HDF5 would not carry the bijectors' variables."""
    if not str(filepath).endswith(".keras"):
      raise ValueError(
          f"Glow.save({str(filepath)!r}): only the '.keras' format keeps every variable of the "
          "flow. Use model.save('model.keras'), model.save_weights(...) / tf.train.Checkpoint, "
          "or tfinvconv.models.export_saved_model(model, directory) for a SavedModel with "
          "log_prob, bits_per_dim and sample signatures.")
    super().save(filepath, *args, **kwargs)

  def uses_compiled_op(self):
    return (self.mixer in ("inverse_conv", "finc", "emerging") and
            self.implementation != "tf")

  def coupling_compute_dtype(self):
    """What the coupling networks compute in ("float32", or the mixed policy's low dtype they
    were built under)."""
    return next(layer.compute_dtype.name for level in self.steps for layer in level
                if isinstance(layer, tib.AffineCoupling))

  def computes_in_float16(self):
    return self.coupling_compute_dtype() == "float16"

  def compile(self, optimizer="rmsprop", *args, jit_compile=None, **kwargs):
    if jit_compile is None:
      jit_compile = False  # Keras would turn XLA on by itself when a GPU is visible
    if jit_compile and self.uses_compiled_op():
      raise ValueError(f"mixer={self.mixer!r} uses the compiled op, which has no XLA kernel: "
                       "compile with jit_compile=False or build the model with "
                       "implementation='tf'")
    # float16 gradients underflow without loss scaling. Keras wraps the optimizer only for a
    # model whose own policy is mixed_float16; Glow's own stays the flow's float32.
    if self.computes_in_float16():
      optimizer = tf_keras.optimizers.get(optimizer)
      if not isinstance(optimizer, _LossScaleOptimizer):
        optimizer = _LossScaleOptimizer(optimizer)
    super().compile(optimizer, *args, jit_compile=jit_compile, **kwargs)

  def fit(self, x=None, *args, **kwargs):  # pylint: disable=keyword-arg-before-vararg
    """`tf_keras.Model.fit`. Under a tf.distribute strategy ActNorm cannot initialise itself
    inside the replicas, so a model whose ActNorms are not initialised yet initialises them
    here from the first batch of `x` (a tf.data.Dataset of images or (images, ...) tuples, or
    an array of images): one batch in cross-replica context, the same on every replica, and on
    every worker when each worker's dataset yields the same first batch (as tf.distribute's
    input sharding needs anyway)."""
    if self._under_strategy() and not any(self._actnorm_flags()):
      self.initialize(self._first_batch(x, kwargs.get("batch_size")))
    return super().fit(x, *args, **kwargs)

  def _under_strategy(self):
    with self.distribute_strategy.scope():
      return tf.distribute.has_strategy()

  def _actnorm_flags(self):
    return [bool(layer.initialized.numpy()) for level in self.steps for layer in level
            if isinstance(layer, tib.ActNorm)]

  def _first_batch(self, x, batch_size):
    if isinstance(x, tf.data.Dataset):
      return self._images(next(iter(x)))
    if x is None or isinstance(x, tf.distribute.DistributedDataset):
      raise ValueError("Glow.fit under a tf.distribute strategy initialises ActNorm from the "
                       "first batch of x: pass a tf.data.Dataset or an array of images, or "
                       "call model.initialize(images) inside strategy.scope() before fit")
    return self._images(x)[:batch_size or 32]

  def call(self, images, training=False):
    return self.bits_per_dim(images)

  @staticmethod
  def _images(data):
    return data[0] if isinstance(data, (tuple, list)) else data

  def training_seed(self, step=None):
    """The dequantisation noise's seed for a training step: (noise_seed, step), step by default
    the optimizer's iterations, so a run resumed from a checkpoint draws what an uninterrupted
    one would."""
    step = self.optimizer.iterations if step is None else step
    return tf.stack([tf.cast(self.noise_seed, tf.int64), tf.cast(step, tf.int64)])

  def gradients(self, images, step=None):
    """(bits/dim per image, [(gradient, variable)]) of one training step on `images`, from the
    optimizer's own `compute_gradients` (the first half of `minimize`), so optimizer wrappers
    work as their guides say: Horovod's `DistributedOptimizer` averages there and
    `LossScaleOptimizer` scales there. Under tf.distribute the optimizer sums the replicas'
    gradients, so each replica's loss is divided by their number. Under Horovod the gradients
    fail, naming the fix, when they differ between workers (`horovod_agreement.check_gradients_agree`)."""
    with tf.GradientTape() as tape:
      per_image = self.bits_per_dim(images, seed=self.training_seed(step))
      loss = tf.reduce_mean(per_image) / replicas_in_sync()
    grads_and_vars = compute_gradients(self.optimizer, loss, self.trainable_variables, tape)
    with tf.control_dependencies([horovod_agreement.check_gradients_agree(g for g, _ in grads_and_vars)]):
      return per_image, [(None if g is None else tf.identity(g), v) for g, v in grads_and_vars]

  def train_step(self, data):
    """One maximum-likelihood step: `gradients`, then the optimizer's `apply_gradients`."""
    per_image, grads_and_vars = self.gradients(self._images(data))
    self.optimizer.apply_gradients(grads_and_vars)
    self._loss_tracker.update_state(per_image)
    result = self._loss_tracker.result()
    return {"loss": result, "bits_per_dim": result}

  def test_step(self, data):
    # Per image, so the result is the mean over images (a short last batch weighs less).
    self._loss_tracker.update_state(self.bits_per_dim(self._images(data)))
    result = self._loss_tracker.result()
    return {"loss": result, "bits_per_dim": result}

  @property
  def metrics(self):
    return [self._loss_tracker]
