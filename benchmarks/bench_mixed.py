"""Glow training step under mixed_bfloat16 against float32, side by side in one process.

    python -m benchmarks.bench_mixed [--quick]

For each configuration a float32 Glow and a mixed_bfloat16 Glow with the same weights run
Glow's own `train_step` (compiled, as `fit` runs it) on the same batch, interleaved call by
call after warm-up; times are medians (min-max). Writes benchmarks/results/mixed_cpu.{md,json}
(--quick: benchmarks/results/quick/). GPU: not measured (no TensorFlow on the GPU machines).
"""

import argparse
import json
import os
import platform
import sys

import numpy as np
import tensorflow as tf
import tf_keras

from benchmarks import compiled_train_step
from benchmarks import timing
from tfinvconv.models import Glow

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# (image size, levels, steps per level, hidden width, batch)
CONFIGS = [(32, 2, 8, 64, 32), (32, 2, 8, 256, 16)]
QUICK = [(16, 2, 2, 32, 16)]


def _build(policy, size, levels, depth, hidden):
  before = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(policy)
  try:
    return Glow((size, size, 3), levels, depth, hidden, mixer="inverse_conv")
  finally:
    tf_keras.mixed_precision.set_global_policy(before)


def _step(model, images):
  """Glow's train_step compiled, with the images bound (what `fit` runs per batch)."""
  step = compiled_train_step(model, tf_keras.optimizers.Adam(1e-5))
  return lambda: step(images)["loss"]


def measure(size, levels, depth, hidden, batch, repeats):
  rng = np.random.default_rng(0)
  images = tf.constant(rng.integers(0, 256, size=(batch, size, size, 3)), tf.uint8)
  models = {"float32": _build("float32", size, levels, depth, hidden),
            "mixed_bfloat16": _build("mixed_bfloat16", size, levels, depth, hidden)}
  models["float32"].initialize(images)
  for a, b in zip(models["float32"].all_variables(), models["mixed_bfloat16"].all_variables()):
    b.assign(a.numpy())  # same weights
  steps = {name: (_step(model, images), ()) for name, model in models.items()}
  row = {"size": size, "levels": levels, "depth": depth, "hidden": hidden, "batch": batch}
  for name, values in timing.interleaved(steps, repeats).items():
    row[name] = timing.summary_ms(values)
  row["ratio"] = row["mixed_bfloat16"]["median_ms"] / row["float32"]["median_ms"]
  return row


def _cpu_bf16_flags():
  """The CPU's bfloat16 instruction flags (none: TensorFlow emulates bfloat16 arithmetic)."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
  except OSError:
    return "unknown"
  return " ".join(sorted(f for f in set(flags) if "bf16" in f)) or "none"


def _fmt(t):
  return f"{t['median_ms']:.1f} ({t['min_ms']:.1f}-{t['max_ms']:.1f})"


def markdown(rows, meta, repeats, command):
  lines = [f"Machine: {meta['cpu']}, {meta['cores']} cores, TensorFlow {meta['tensorflow']}. "
           f"Command: `{command}`. bfloat16 instructions (/proc/cpuinfo): "
           f"{meta.get('cpu_bf16_flags', 'unknown')}. Load average (1/5/15 min) when it ended: "
           f"{'/'.join(f'{v:.1f}' for v in meta['load_average_after'])} (a shared machine: "
           "absolute times are inflated, the interleaved ratio less so).", "",
           "Glow (mixer inverse_conv, 3 channels) training step: float32 against "
           "mixed_bfloat16 (coupling networks in bfloat16, the rest float32), same weights and "
           f"batch, interleaved; ms, median (min-max) of {repeats}.", "",
           "| input | levels x steps | hidden | batch | float32 | mixed_bfloat16 | "
           "bf16 / f32 |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['size']}x{r['size']} | {r['levels']}x{r['depth']} | {r['hidden']} | "
                 f"{r['batch']} | {_fmt(r['float32'])} | {_fmt(r['mixed_bfloat16'])} | "
                 f"{r['ratio']:.2f} |")
  lines += ["", "GPU: not measured - the GPU machines we measure on have no TensorFlow. On GPUs "
            "with bfloat16/float16 tensor cores the coupling networks (most of Glow's FLOPs) "
            "are where mixed precision is expected to pay; this CPU table says nothing about "
            "that."]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="smoke run in seconds")
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args(argv)
  configs, repeats = (QUICK, 3) if args.quick else (CONFIGS, args.repeats)
  meta = {"cpu": timing.cpu_name(), "cores": os.cpu_count(),
          "tensorflow": tf.__version__, "python": platform.python_version(),
          "cpu_bf16_flags": _cpu_bf16_flags()}
  rows = []
  for config in configs:
    rows.append(measure(*config, repeats))
    print(f"measured {config}: ratio {rows[-1]['ratio']:.2f}", flush=True)
  meta["load_average_after"] = list(os.getloadavg())
  command = "python -m benchmarks.bench_mixed" + "".join(" " + a for a in (
      argv if argv is not None else sys.argv[1:]))
  text = markdown(rows, meta, repeats, command)
  out = os.path.join(RESULTS, "quick") if args.quick else RESULTS
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "mixed_cpu.json"), "w") as f:
    json.dump({"meta": meta, "command": command, "repeats": repeats, "rows": rows}, f, indent=1)
  with open(os.path.join(out, "mixed_cpu.md"), "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
