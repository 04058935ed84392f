"""SavedModel export of a Glow, loadable without its Python class.

    export_saved_model(model, "glow_savedmodel")
    # any process: import tfinvconv (registers the compiled op), then
    loaded = tf.saved_model.load("glow_savedmodel")
    loaded.log_prob(x)                       # continuous scaled data [B, H, W, C]
    loaded.bits_per_dim(images, seed)        # uint8 images; seed: int64 [2] for the noise
    loaded.sample(n, temperature, seed)      # {"x": scaled data, "images": uint8}

The same three are the SavedModel's serving signatures (TF Serving, saved_model_cli). Noise is
stateless: the same seed gives the same numbers in every process.
"""

import tensorflow as tf

from tfinvconv.models import glow
from tfinvconv.models import horovod_agreement


def _sample(model, n, temperature, seed):
  x = model.sample(n, temperature, seed)
  return {"x": x, "images": model.to_images(x)}


def export_saved_model(model, directory):
  """Writes `model` (a tfinvconv Glow) as a SavedModel with log_prob, bits_per_dim and sample."""
  if not isinstance(model, glow.Glow):
    raise TypeError(f"export_saved_model takes a tfinvconv.models.Glow, got "
                    f"{type(model).__name__} (for other Keras models use model.export)")
  # Any image size is accepted by the signature, so that the model itself refuses another size
  # with its message naming both shapes (TF's signature error dumps the whole tensor instead).
  data = tf.TensorSpec([None, None, None, None], model.dtype, name="x")
  images = tf.TensorSpec([None, None, None, None], tf.uint8, name="images")
  seed = tf.TensorSpec([2], tf.int64, name="seed")

  module = tf.Module()
  module.flow_variables = model.all_variables()  # what the functions capture, tracked
  module.log_prob = tf.function(lambda x: {"log_prob": model.log_prob(x)},
                                input_signature=[data])
  module.bits_per_dim = tf.function(
      lambda images, seed: {"bits_per_dim": model.bits_per_dim(images, seed=seed)},
      input_signature=[images, seed])
  module.sample = tf.function(
      lambda n, temperature, seed: _sample(model, n, temperature, seed),
      input_signature=[tf.TensorSpec([], tf.int32, name="n"),
                       tf.TensorSpec([], model.dtype, name="temperature"), seed])
  with horovod_agreement.unchecked():  # traced here: no Horovod op in the saved gradients
    tf.saved_model.save(module, directory, signatures={
        "log_prob": module.log_prob, "bits_per_dim": module.bits_per_dim,
        "sample": module.sample})
