"""The learning-rate schedule of every run (and of the benchmarks that train like one)."""

import tensorflow as tf
import tf_keras


@tf_keras.saving.register_keras_serializable(package="tfinvconv_train")
class WarmupSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up to `peak` over `warmup_steps`, then constant (openai/glow)."""

  def __init__(self, peak, warmup_steps):
    self.peak, self.warmup_steps = float(peak), max(1, int(warmup_steps))

  def __call__(self, step):
    fraction = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / self.warmup_steps)
    return self.peak * fraction

  def get_config(self):
    return {"peak": self.peak, "warmup_steps": self.warmup_steps}
