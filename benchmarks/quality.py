"""Which invertible convolution models images better? Every mixer of our Glow and
tfp.bijectors.Glow at matched parameter counts, trained the same way from several seeds.

    .venv/bin/python -m benchmarks.quality [--datasets digits,photo_patches] [--seeds 3]
                                           [--steps N] [--quick]

Each dataset's setting is tfinvconv/train/presets.py's preset with this benchmark's overrides named
(SETTINGS). Each model's coupling width is chosen so that its parameter count is within 5 % of
the inverse_conv model's at the dataset's reference width. Every run: tfinvconv.train.data's training
split and stream (batches in a seed-dependent order), the model's own training step
(Glow.train_step, compiled as `fit` compiles it) with Adam and a linear warm-up, the same
number of steps, then test bits/dim over the whole test split (dequantisation noise seeded).
Reported: mean ± sample standard deviation over seeds, every seed's value, parameters, median
train-step and sampling times. Writes benchmarks/results/quality.{md,json} (--quick: a smoke
run that writes nothing).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf
import tf_keras

from benchmarks import compiled_train_step, separation, write_results
from benchmarks.tfp_glow import TfpGlow, count
from tfinvconv.models import Glow
from tfinvconv.models.glow import MIXERS
from tfinvconv.train import baseline
from tfinvconv.train import data
from tfinvconv.train import presets
from tfinvconv.train.schedule import WarmupSchedule

MODELS = ("inverse_conv", "1x1", "finc", "emerging", "nxn", "tfp_glow")  # most asked first
assert set(MODELS) == set(MIXERS) | {"tfp_glow"}
TOLERANCE = 0.05  # parameter counts within 5 % of the reference


def _steps_per_epoch(preset):
  """As the trainer counts them: full batches in one pass over the training split."""
  source = data.load_split(preset["dataset"], "train", preset["image_size"],
                           data.image_channels(preset["dataset"]))
  return max(1, source.count() // preset["batch_size"])


def from_preset(name, epochs=None, **overrides):
  """A dataset's setting, under the names quality.json records: tfinvconv/train/presets.py's preset
  `name` with its epochs (or `epochs`) and warm-up counted in steps, then `overrides`."""
  preset = presets.PRESETS[name]
  # Not recorded in quality.json: every model here has affine couplings (tfp's Glow has no
  # other) and 3x3 mixers, so a preset that changes them must first become a setting.
  assert (preset["coupling"], preset["kernel_size"]) == ("affine", 3), name
  per_epoch = _steps_per_epoch(preset)
  setting = dict(image_size=preset["image_size"], levels=preset["num_levels"],
                 depth=preset["depth"], hidden=preset["hidden_channels"],
                 n_bins=preset.get("n_bins") or 2 ** preset["n_bits"],
                 batch=preset["batch_size"], steps=(epochs or preset["epochs"]) * per_epoch,
                 warmup=round(preset["warmup_epochs"] * per_epoch),
                 learning_rate=preset["learning_rate"])
  unknown = set(overrides) - set(setting)
  assert not unknown, f"not a setting: {unknown}"
  return dict(setting, **overrides)


# Per dataset: the model shape (levels, steps per level, reference coupling width), the data
# reduction and the training length: `python -m tfinvconv.train`'s preset but for the values named here.
SETTINGS = {
    # 20 of the preset's 40 epochs: 460 steps, after its 1 warm-up epoch (23 steps).
    "digits": from_preset("digits", epochs=20),
    # Half the preset's depth and width; 300 steps with 30 warm-up steps (the preset: 10 epochs
    # of 95 steps, 1 of them warm-up).
    "photo_patches": from_preset("photo_patches", depth=4, hidden=64, steps=300, warmup=30),
}
QUICK = dict(depth=1, hidden=16, steps=4, warmup=2)


def build(name, image_shape, setting, hidden, seed, count_only=False):
  """A fresh model. tfp's Glow creates its variables, and initialises its ActNorms from the
  data, on its first call: only a model built to be counted is called here (on zeros)."""
  tf_keras.utils.set_random_seed(seed)
  if name == "tfp_glow":
    model = TfpGlow(image_shape, setting["levels"], setting["depth"], hidden,
                    n_bins=setting["n_bins"], seed=seed)
    if count_only:
      model.log_prob(tf.zeros((1,) + tuple(image_shape)))
    return model
  return Glow(image_shape, setting["levels"], setting["depth"], hidden, mixer=name,
              n_bins=setting["n_bins"], seed=seed)


def matched_width(name, image_shape, setting, target):
  """The coupling width whose parameter count is nearest `target` (counts grow with width)."""
  counts = {}

  def params(hidden):
    if hidden not in counts:
      counts[hidden] = count(build(name, image_shape, setting, hidden, 0,
                                   count_only=True).trainable_variables)
    return counts[hidden]

  low, high = setting["hidden"] // 3, 3 * setting["hidden"]
  while high - low > 1:  # smallest width with params >= target
    middle = (low + high) // 2
    low, high = (middle, high) if params(middle) < target else (low, middle)
  best = min((low, high), key=lambda h: abs(params(h) - target))
  return best, params(best)


def train_and_measure(model, train_source, test_images, setting, seed):
  """Trains with the model's own training step (Adam + warm-up) on tfinvconv.train.data's training
  stream, shuffled by `seed`; returns the measurements of one run."""
  batches = iter(data.pipeline(train_source, setting["batch"], seed=seed))
  first = next(batches)
  if isinstance(model, Glow):
    model.initialize(first)
  else:  # tfp's Glow: its first call initialises its ActNorms, so make it a real batch
    model.log_prob(model.preprocess(first))
  step = compiled_train_step(model, tf_keras.optimizers.Adam(
      WarmupSchedule(setting["learning_rate"], setting["warmup"])))

  times, diverged_at, loss = [], None, float("nan")
  for i in range(setting["steps"]):
    images = first if i == 0 else next(batches)
    model.reset_metrics()  # the loss of this batch, not the mean since the first
    start = time.perf_counter()
    loss = float(step(images)["loss"].numpy())
    times.append(time.perf_counter() - start)
    if not np.isfinite(loss):
      diverged_at = i
      break
  sampler = tf.function(lambda: model.sample(64))
  sampler()
  sample_times = []
  for _ in range(3):
    start = time.perf_counter()
    sampler().numpy()
    sample_times.append(time.perf_counter() - start)
  tf.random.set_seed(1)  # the same dequantisation noise for every model
  test = [model.bits_per_dim(test_images[i:i + 500]).numpy()
          for i in range(0, len(test_images), 500)]
  return {"seed": seed, "test_bits_per_dim": float(np.mean(np.concatenate(test))),
          "last_train_bits_per_dim": loss, "diverged_at_step": diverged_at,
          "train_step_ms": 1e3 * float(np.median(times[1:] or times)),
          "sample_64_ms": 1e3 * float(np.median(sample_times))}


def source_of(dataset, split, image_size):
  return data.load_split(dataset, split, image_size, data.image_channels(dataset))


def all_images(source):
  return np.concatenate([b.numpy() for b in source.images().batch(1000)])


def images_of(dataset, split, image_size):
  return all_images(source_of(dataset, split, image_size))


def run_dataset(dataset, setting, seeds, log, progress=lambda result: None, models=MODELS):
  """Every model on one dataset; `progress` gets the partial result after each model."""
  train_source = source_of(dataset, "train", setting["image_size"])
  train_images = all_images(train_source)
  test_images = images_of(dataset, "test", setting["image_size"])
  image_shape = train_images.shape[1:]
  target = count(build("inverse_conv", image_shape, setting, setting["hidden"],
                       0).trainable_variables)
  rows = []
  for name in models:
    hidden, params = matched_width(name, image_shape, setting, target)
    if abs(params / target - 1) > TOLERANCE:
      raise RuntimeError(f"{name}: no coupling width gives {target:,} parameters within "
                         f"{TOLERANCE:.0%} (nearest {params:,} at width {hidden})")
    runs = []
    for seed in range(seeds):
      model = build(name, image_shape, setting, hidden, seed)
      runs.append(train_and_measure(model, train_source, test_images, setting, seed))
      log(f"{dataset} {name} seed {seed}: {runs[-1]['test_bits_per_dim']:.4f} bits/dim")
    values = [r["test_bits_per_dim"] for r in runs]
    rows.append({"model": name, "hidden": hidden, "params": params, "runs": runs,
                 "mean": float(np.mean(values)),
                 "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                 "train_step_ms": float(np.median([r["train_step_ms"] for r in runs])),
                 "sample_64_ms": float(np.median([r["sample_64_ms"] for r in runs]))})
    result = {"dataset": dataset, "setting": setting, "train_images": len(train_images),
              "test_images": len(test_images), "image_shape": list(image_shape),
              "reference_params": target, "rows": rows,
              "baseline_bits_per_dim": baseline.histogram_bits_per_dim(
                  train_images, test_images, setting["n_bins"])}
    progress(result)
  return result


def markdown(result, command):
  s = result["setting"]
  h, w, c = result["image_shape"]
  lines = [f"### {result['dataset']} ({h}x{w}x{c}, {result['train_images']} train / "
           f"{result['test_images']} test images, {s['n_bins']} grey levels)", "",
           f"{s['levels']} levels x {s['depth']} steps, affine coupling, batch {s['batch']}, "
           f"{s['steps']} Adam steps (peak {s['learning_rate']}, {s['warmup']} warm-up), "
           f"parameters matched to within {TOLERANCE:.0%} of inverse_conv at width "
           f"{s['hidden']} ({result['reference_params']:,}). Per-pixel histogram baseline: "
           f"{result['baseline_bits_per_dim']:.3f} bits/dim.", "",
           "| model | width | params | test bits/dim (mean ± std) | per seed | diverged | "
           "train step (ms) | sample 64 (ms) |", "|---|---|---|---|---|---|---|---|"]
  for r in sorted(result["rows"], key=lambda r: (np.isnan(r["mean"]), r["mean"])):
    seeds = ", ".join(f"{x['test_bits_per_dim']:.3f}" for x in r["runs"])
    diverged = ", ".join(f"seed {x['seed']} at step {x['diverged_at_step']}"
                         for x in r["runs"] if x["diverged_at_step"] is not None) or "—"
    lines.append(f"| {r['model']} | {r['hidden']} | {r['params']:,} | {r['mean']:.3f} ± "
                 f"{r['std']:.3f} | {seeds} | {diverged} | {r['train_step_ms']:.1f} | "
                 f"{r['sample_64_ms']:.1f} |")
  ranked = sorted((r for r in result["rows"] if np.isfinite(r["mean"])),
                  key=lambda r: r["mean"])
  by_name = {r["model"]: r for r in result["rows"]}
  if len(ranked) > 1:
    lines += ["", f"Best: {ranked[0]['model']}, ahead of {ranked[1]['model']} by "
                  f"{ranked[1]['mean'] - ranked[0]['mean']:.3f} bits/dim = "
                  f"{separation(ranked[0], ranked[1]):.1f} standard deviations of the "
                  "difference."]
  if "inverse_conv" in by_name and "1x1" in by_name:
    ours, glow = by_name["inverse_conv"], by_name["1x1"]
    lines.append(f"inverse_conv vs 1x1: {glow['mean'] - ours['mean']:+.3f} bits/dim in "
                 f"inverse_conv's favour ({separation(ours, glow):+.1f} standard deviations).")
  return "\n".join(lines + ["", f"Command: `{command}`"])


def _header():
  return (f"# Test bits/dim by mixer, mean ± std over seeds ({os.cpu_count()} CPU cores, TF "
          f"{tf.__version__})\n\n")


def merge(paths):
  """One quality.{json,md} from the results of separate runs (e.g. one per dataset)."""
  runs = []
  for path in paths:
    with open(path) as f:
      runs.append(json.load(f))
  by_dataset = {}
  for run in runs:
    for r in run["results"]:
      if r["dataset"] in by_dataset:  # same dataset and setting: later rows replace a model's
        if r["setting"] != by_dataset[r["dataset"]]["setting"]:
          raise ValueError(f"{r['dataset']}: the runs to merge used different settings")
        rows = {row["model"]: row for row in by_dataset[r["dataset"]]["rows"] + r["rows"]}
        by_dataset[r["dataset"]]["rows"] = [rows[m] for m in MODELS if m in rows]
      else:
        by_dataset[r["dataset"]] = r
  results = list(by_dataset.values())
  for r in results:  # runs from before the baseline was recorded
    if "baseline_bits_per_dim" not in r:
      size = r["setting"]["image_size"]
      r["baseline_bits_per_dim"] = baseline.histogram_bits_per_dim(
          images_of(r["dataset"], "train", size), images_of(r["dataset"], "test", size),
          r["setting"]["n_bins"])
  command = " && ".join(run["command"] for run in runs)
  text = "\n\n".join(markdown(r, command) for r in results)
  header = _header()
  write_results("quality", {"command": command, "results": results}, header + text)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets", default="digits,photo_patches")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=0, help="0: each dataset's default")
  parser.add_argument("--quick", action="store_true", help="tiny smoke run, writes nothing")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--merge", nargs="+", metavar="JSON",
                      help="only merge the quality.json files of separate runs into one")
  args = parser.parse_args(argv)
  if args.merge:
    return merge(args.merge)
  unknown = [d for d in args.datasets.split(",") if d not in SETTINGS]
  unknown += [m for m in args.models.split(",") if m not in MODELS]
  if unknown or args.seeds < 1 or args.steps < 0:
    parser.error(f"--datasets takes {', '.join(SETTINGS)}, --models {', '.join(MODELS)} (got "
                 f"{unknown}); --seeds >= 1, --steps >= 0")
  command = "python -m benchmarks.quality " + " ".join(argv if argv is not None else
                                                        sys.argv[1:])
  results = []

  def write(partial):  # after every model, so an interrupted run keeps what it measured
    done = results + [partial]
    text = "\n\n".join(markdown(r, command.strip()) for r in done)
    header = _header()
    if args.quick:
      return header + text
    write_results("quality", {"command": command.strip(), "results": done}, header + text)
    return header + text

  for dataset in args.datasets.split(","):
    setting = dict(SETTINGS[dataset], **(QUICK if args.quick else {}))
    if args.steps:
      setting["steps"] = args.steps
    results.append(run_dataset(dataset, setting, args.seeds, print, write,
                               args.models.split(",")))
  print(write(results.pop()))


if __name__ == "__main__":
  main()
