"""Model-level tables in the form of Inverse-Flow's Tables 7/8 (input size) and 10 (kernel size).

Every row of a table is measured in one process, models interleaved call by call, as medians
(min-max) over repeats after warm-up. Peak memory is measured per configuration in a fresh
process (`--memory MODEL SIZE`). Architecture: the slides write "K = 2, L = 32"; in Glow's
notation (the slides' Table 3: "block size K = 16, number of blocks L = 2") K is the steps per
level and L the levels, and 32 levels cannot exist below 2^32 pixels, so we read it as K = 32
steps per level, L = 2 levels. Depth and hidden width are reduced to fit this 2-core CPU (the
config line of each table says what ran), and the batch / sample size of 100 is scaled down
with the image size.
"""

import argparse
import json
import subprocess
import sys

import numpy as np
import tensorflow as tf
import tf_keras

from benchmarks import compiled_train_step
from benchmarks import timing
from benchmarks.tfp_glow import TfpGlow
from tfinvconv.models import Glow

MODELS = ("inverse_conv", "finc", "1x1", "tfp_glow")
# Images per batch (and samples drawn) per input size: the slides use 100; a 2-core CPU cannot.
BATCH = {16: 100, 32: 32, 64: 8, 128: 2, 256: 1}


def build(name, size, depth, hidden, levels=2, kernel_size=3, channels=3):
  if name == "tfp_glow":
    return TfpGlow((size, size, channels), levels, depth, hidden)
  return Glow((size, size, channels), levels, depth, hidden, mixer=name,
              kernel_size=kernel_size)


def _params(model):
  return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def make_callables(model, batch, seed=0):
  """Compiled forward (log-prob of a batch), training step (the model's own `train_step` on
  the batch, as `fit` runs it: dequantisation included) and sampling."""
  rng = np.random.default_rng(seed)
  images = tf.constant(rng.integers(0, 256, size=(batch,) + model.image_shape), tf.uint8)
  x = model.preprocess(images)
  if isinstance(model, Glow):
    model.initialize(images)
  step = compiled_train_step(model, tf_keras.optimizers.Adam(1e-4))

  @tf.function
  def forward():
    return model.log_prob(x)

  @tf.function
  def sample():
    return model.sample(batch)

  return {"forward": forward, "train_step": lambda: step(images)["loss"], "sample": sample}


def measure(configs, repeats):
  """configs: {key: (model, batch)}. Returns {key: {measure: [seconds, ...]}}, interleaved."""
  calls = {(key, name): (fn, ()) for key, (model, batch) in configs.items()
           for name, fn in make_callables(model, batch).items()}
  times = {key: {} for key in configs}
  for (key, name), values in timing.interleaved(calls, repeats, warmup=1).items():
    times[key][name] = values
  return times


def peak_memory_gb(name, size, depth, hidden, kernel_size=3):
  """Peak RSS of a fresh process that builds the model and runs one training step + sampling."""
  command = [sys.executable, "-m", "benchmarks.bench_models", "--memory", name, str(size),
             "--depth", str(depth), "--hidden", str(hidden), "--kernel-size", str(kernel_size)]
  result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
  if result.returncode != 0:
    return None
  return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_gb"]


def _memory_main(name, size, depth, hidden, kernel_size):
  model = build(name, size, depth, hidden, kernel_size=kernel_size)
  fns = make_callables(model, BATCH[size])
  fns["train_step"]()
  fns["sample"]()
  print(json.dumps({"peak_rss_gb": timing.peak_rss_kb() / 2 ** 20}))


def size_table(sizes, depth, hidden, repeats, memory=True, models=MODELS):
  rows = []
  for size in sizes:
    configs = {name: (build(name, size, depth, hidden), BATCH[size]) for name in models}
    times = measure(configs, repeats)
    for name in models:
      row = {"model": name, "size": size, "batch": BATCH[size],
             "params": _params(configs[name][0])}
      for measure_name, values in times[name].items():
        row[measure_name] = timing.summary_ms(values)
      row["peak_rss_gb"] = peak_memory_gb(name, size, depth, hidden) if memory else None
      rows.append(row)
    print(f"measured size {size}", flush=True)
  return rows


def kernel_table(kernel_sizes, size, depth, hidden, repeats):
  configs = {k: (build("inverse_conv", size, depth, hidden, kernel_size=k), BATCH[size])
             for k in kernel_sizes}
  times = measure(configs, repeats)
  rows = []
  for k in kernel_sizes:
    row = {"kernel_size": k, "size": size, "batch": BATCH[size],
           "params": _params(configs[k][0])}
    for measure_name, values in times[k].items():
      row[measure_name] = timing.summary_ms(values)
    rows.append(row)
  return rows


def fit_exponent(xs, ys):
  """b in y ~ a * x^b (least squares in log-log)."""
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--memory", nargs=2, metavar=("MODEL", "SIZE"))
  parser.add_argument("--depth", type=int, default=32)
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--kernel-size", type=int, default=3)
  args = parser.parse_args()
  if args.memory:
    _memory_main(args.memory[0], int(args.memory[1]), args.depth, args.hidden,
                 args.kernel_size)


if __name__ == "__main__":
  main()
