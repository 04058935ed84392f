"""Benchmarks; every table lands in benchmarks/results/ as NAME.md plus NAME.json."""

import json
import math
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_results(name, data, markdown, folder=RESULTS):
  """Writes folder/NAME.json (the numbers) and folder/NAME.md (the table people read)."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, name + ".json"), "w") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(folder, name + ".md"), "w") as f:
    f.write(markdown + "\n")


def separation(a, b):
  """How many standard deviations apart two rows' means are (std of the difference): rows are
  dicts with "mean" and "std", as benchmarks/results/quality.json holds them."""
  spread = math.hypot(a["std"], b["std"])
  return (b["mean"] - a["mean"]) / spread if spread > 0 else float("inf")


def compiled_train_step(model, optimizer):
  """The training step users run, compiled as `fit` compiles it: `model.compile`, then the
  model's own `train_step` under tf.function (Glow's; for tfp's Glow, TfpGlow's stand-in).
  Returns data -> {"loss", "bits_per_dim"}, the running mean since `model.reset_metrics()`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # readme.py needs no TF
  model.compile(optimizer=optimizer)
  return tf.function(model.train_step)
