"""Our Glow (mixer "1x1" and "inverse_conv") next to tfp.bijectors.Glow on real data.

    .venv/bin/python -m benchmarks.bench_glow_vs_tfp [--steps N] [--quick]

All three train on scikit-learn's bundled 8x8 digits (1,500 train / 297 test images, upsampled
to 16x16 nearest-neighbour so three levels fit) with the same architecture where the libraries
allow it (levels, steps per level, hidden channels, affine coupling, actnorm), the same
preprocessing and dequantisation, the same optimizer, batch and number of steps, and the same
custom training step, so times compare. Train steps and sampling are timed interleaved, model
by model, in one process. Writes benchmarks/results/glow_vs_tfp.{json,md}.
"""

import argparse
import math
import os
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras
from sklearn.datasets import load_digits

from benchmarks import write_results
from tfinvconv.models import Glow
from tfinvconv.models.glow import dequantize

tfb, tfd = tfp.bijectors, tfp.distributions


def load_data():
  images = np.round(load_digits().images / 16.0 * 255.0).astype(np.uint8)
  images = images.repeat(2, axis=1).repeat(2, axis=2)[..., None]  # 16x16x1
  rng = np.random.default_rng(0)
  order = rng.permutation(len(images))
  return images[order[:1500]], images[order[1500:]]


class TfpGlow:
  """tfp.bijectors.Glow behind the same small interface as our model (same data handling)."""

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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--depth", type=int, default=8)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test")
  args = parser.parse_args()
  steps, depth, hidden = (20, 2, 16) if args.quick else (args.steps, args.depth, args.hidden)
  levels, batch = 3, 64
  tf_keras.utils.set_random_seed(0)
  train, test = load_data()
  models = {
      "ours_1x1": Glow((16, 16, 1), levels, depth, hidden, mixer="1x1"),
      "ours_inverse_conv": Glow((16, 16, 1), levels, depth, hidden, mixer="inverse_conv"),
  }
  models["tfp_glow"] = TfpGlow((16, 16, 1), levels, depth, hidden)
  optimizers = {name: tf_keras.optimizers.Adam(1e-3) for name in models}
  data = iter(tf.data.Dataset.from_tensor_slices(train).shuffle(1500, seed=0).repeat()
              .batch(batch, drop_remainder=True))

  steps_fns = {name: train_step_fn(models[name], optimizers[name]) for name in models}
  samplers = {name: tf.function(lambda n=100, m=models[name]: m.sample(n)) for name in models}
  first = next(data)
  for name in models:  # trace, initialise ActNorm on a real batch, warm up
    if name.startswith("ours"):
      models[name].initialize(first)
    steps_fns[name](first)
    samplers[name]()
  step_times = {name: [] for name in models}
  last_loss = {name: float("nan") for name in models}
  first_nonfinite = {name: None for name in models}  # step at which training diverged
  for step in range(steps):
    images = next(data)
    for name, fn in steps_fns.items():
      start = time.perf_counter()
      last_loss[name] = float(fn(images).numpy())
      step_times[name].append(time.perf_counter() - start)
      if first_nonfinite[name] is None and not np.isfinite(last_loss[name]):
        first_nonfinite[name] = step
  sample_times = {name: [] for name in models}
  for _ in range(5):
    for name, fn in samplers.items():
      start = time.perf_counter()
      fn().numpy()
      sample_times[name].append(time.perf_counter() - start)

  rows = []
  test_batches = [test[i:i + 99] for i in range(0, len(test), 99)]
  for name, model in models.items():
    tf.random.set_seed(1)
    bpd = float(np.mean(np.concatenate([model.bits_per_dim(b).numpy() for b in test_batches])))
    rows.append({"model": name, "params": count(model.trainable_variables),
                 "test_bits_per_dim": bpd, "final_train_bits_per_dim": last_loss[name],
                 "first_nonfinite_step": first_nonfinite[name],
                 "train_step_ms": 1e3 * float(np.median(step_times[name])),
                 "sample_100_ms": 1e3 * float(np.median(sample_times[name]))})
  by_name = {r["model"]: r for r in rows}
  ratios = {
      "inverse_conv_step_over_1x1": by_name["ours_inverse_conv"]["train_step_ms"] /
                                    by_name["ours_1x1"]["train_step_ms"],
      "inverse_conv_sample_over_1x1": by_name["ours_inverse_conv"]["sample_100_ms"] /
                                      by_name["ours_1x1"]["sample_100_ms"],
      "ours_1x1_step_over_tfp": by_name["ours_1x1"]["train_step_ms"] /
                                by_name["tfp_glow"]["train_step_ms"],
      "ours_1x1_sample_over_tfp": by_name["ours_1x1"]["sample_100_ms"] /
                                  by_name["tfp_glow"]["sample_100_ms"],
  }
  config = {"image": "digits 16x16x1", "levels": levels, "depth": depth, "hidden": hidden,
            "batch": batch, "steps": steps, "optimizer": "Adam 1e-3",
            "tensorflow": tf.__version__, "cores": os.cpu_count()}
  lines = [f"Glow on digits (16x16x1), {levels} levels x {depth} steps, hidden {hidden}, batch "
           f"{batch}, {steps} Adam steps each, {os.cpu_count()} CPU cores, TF {tf.__version__}.",
           "", "| model | params | test bits/dim | last train bits/dim | diverged at step "
           "| train step (ms) | sample 100 (ms) |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    diverged = "—" if r["first_nonfinite_step"] is None else str(r["first_nonfinite_step"])
    lines.append(f"| {r['model']} | {r['params']:,} | {r['test_bits_per_dim']:.3f} | "
                 f"{r['final_train_bits_per_dim']:.3f} | {diverged} | "
                 f"{r['train_step_ms']:.1f} | {r['sample_100_ms']:.1f} |")
  lines += ["", "Ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items())]
  table = "\n".join(lines)
  print(table)
  if not args.quick:
    write_results("glow_vs_tfp", {"config": config, "rows": rows, "ratios": ratios}, table)


if __name__ == "__main__":
  main()
