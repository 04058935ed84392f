"""Activation memory and step time of Glow's backprop modes (stored, checkpointed, reversible):
`python -m benchmarks.bench_memory [--quick]` writes benchmarks/results/memory_cpu.{md,json}.

Memory: each configuration runs in a fresh process. It builds the model, initialises it and runs
one compiled training step (tracing, the allocator's first growth); then the peak resident set
is reset (/proc/self/clear_refs) and a second step is run. Its peak over the resident set before
it is the step's working memory: activations, their gradients and the weights' gradients.
glibc is told to return every block of 128 KiB or more at once (MALLOC_MMAP_THRESHOLD_), so what
the first step freed does not stay resident and hide the second step's growth.
Time: the median of `repeats` steps in that process after the measured one; each mode's ratio to
`stored` is taken between processes run one after the other on an otherwise idle machine.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

from benchmarks import RESULTS
from benchmarks import write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("stored", "checkpointed", "reversible")
# The sweeps: depth at 64² (3 levels, width 128, batch 16); image size at depth 8 (batch 2).
DEPTHS, DEPTH_SIZE = (4, 8, 16, 32), 64
SIZES, SIZE_DEPTH, SIZE_BATCH = (32, 64, 128, 256), 8, 2
LEVELS, WIDTH, BATCH = 3, 128, 16


def measure(mode, depth, size, levels=LEVELS, width=WIDTH, batch=BATCH, repeats=3,
            mixer="inverse_conv", **glow):
  """One configuration in a fresh process: the spec with "step_mb" and "step_ms" added."""
  spec = dict(mode=mode, depth=depth, size=size, levels=levels, width=width, batch=batch,
              repeats=repeats, mixer=mixer, glow=glow)
  env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", "--one",
                           json.dumps(spec)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=3600, check=False)
  if result.returncode != 0:
    raise RuntimeError(f"bench_memory {spec} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def measure_preset(name, mode, batch):
  """A training step of the trainer's preset `name` at its real size (random images of its
  shape: the data does not change the memory), without timing."""
  from tfinvconv.train import presets  # pylint: disable=g-import-not-at-top
  preset = presets.PRESETS[name]
  return dict(measure(mode, preset["depth"], preset["image_size"], preset["num_levels"],
                      preset["hidden_channels"], batch, repeats=0, coupling=preset["coupling"],
                      n_bits=preset["n_bits"]), preset=name)


def _one(spec):
  """Runs in the fresh process: the measurement `measure` describes."""
  import time  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from benchmarks import compiled_train_step  # pylint: disable=g-import-not-at-top
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  from tfinvconv.models import Glow  # pylint: disable=g-import-not-at-top
  size = spec["size"]
  model = Glow((size, size, 3), num_levels=spec["levels"], depth=spec["depth"],
               hidden_channels=spec["width"], mixer=spec["mixer"], backprop=spec["mode"],
               **spec["glow"])
  images = np.random.default_rng(0).integers(0, 256, (spec["batch"], size, size, 3), np.uint8)
  model.initialize(images)
  step = compiled_train_step(model, tf_keras.optimizers.Adam(1e-4))
  step(images)["loss"].numpy()
  before = timing.rss_kb()
  timing.reset_peak_rss()
  step(images)["loss"].numpy()
  step_kb = timing.peak_rss_kb() - before
  times = []
  for _ in range(spec["repeats"]):
    start = time.perf_counter()
    step(images)["loss"].numpy()
    times.append(time.perf_counter() - start)
  return dict(spec, step_mb=step_kb / 1024,
              step_ms=1e3 * float(np.median(times)) if times else None)


def _table(rows, key, title):
  lines = [f"### {title}", "",
           f"| {key} | " + " | ".join(f"{m} MB" for m in MODES) + " | " +
           " | ".join(f"{m} step (× stored)" for m in MODES[1:]) + " |",
           "|---|" + "---|" * (2 * len(MODES) - 1)]
  for value in sorted({r[key] for r in rows}):
    by_mode = {r["mode"]: r for r in rows if r[key] == value}
    memory = " | ".join(f"{by_mode[m]['step_mb']:.0f}" for m in MODES)
    ratio = " | ".join(f"{by_mode[m]['step_ms'] / by_mode['stored']['step_ms']:.2f}"
                       for m in MODES[1:])
    lines.append(f"| {value} | {memory} | {ratio} |")
  return lines


def growth(rows, mode, key="depth"):
  """A mode's step memory at the largest `key` over that at the smallest."""
  mine = sorted((r[key], r["step_mb"]) for r in rows if r["mode"] == mode)
  return mine[-1][1] / mine[0][1]


GPU_BYTES = 80e9  # an 80 GB GPU (H100)
PRESETS = ("cifar10", "imagenet64", "celeba_hq")


def per_gpu(one, two, params):
  """From steps at batch 1 and 2: MB per image, and how many images fit in GPU_BYTES beside the
  weights, their gradients and Adam's two slots (16 bytes per parameter)."""
  per_image = two["step_mb"] - one["step_mb"]
  fixed = one["step_mb"] - per_image
  room = GPU_BYTES / 2 ** 20 - 16 * params / 2 ** 20 - fixed
  return {"per_image_mb": per_image, "fixed_mb": fixed,
          "images_per_gpu": int(room // per_image) if per_image > 0 else None}


def _preset_rows(names):
  from tfinvconv.models import Glow  # pylint: disable=g-import-not-at-top
  from tfinvconv.train import presets  # pylint: disable=g-import-not-at-top
  rows = []
  for name in names:
    p = presets.PRESETS[name]
    params = Glow((p["image_size"], p["image_size"], 3), p["num_levels"], p["depth"],
                  p["hidden_channels"], coupling=p["coupling"]).count_params()
    for mode in MODES:
      one, two = measure_preset(name, mode, 1), measure_preset(name, mode, 2)
      rows.append(dict(preset=name, mode=mode, params=params, batch1_mb=one["step_mb"],
                       batch2_mb=two["step_mb"], **per_gpu(one, two, params)))
      print(rows[-1], flush=True)
  return rows


def _preset_table(rows):
  lines = ["### The presets at their real size (one step, batch 1 and 2)", "",
           "| preset | mode | step MB, batch 1 | MB per image | images per 80 GB GPU (estimate) |",
           "|---|---|---|---|---|"]
  for r in rows:
    fits = "—" if r["images_per_gpu"] is None else str(r["images_per_gpu"])
    lines.append(f"| {r['preset']} | {r['mode']} | {r['batch1_mb']:.0f} | "
                 f"{r['per_image_mb']:.0f} | {fits} |")
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="two depths at 32², seconds")
  parser.add_argument("--presets", nargs="*", default=list(PRESETS),
                      help="the trainer presets measured at their real size")
  parser.add_argument("--sizes", nargs="*", type=int, default=list(SIZES),
                      help=f"image sizes of the size sweep at depth {SIZE_DEPTH}")
  parser.add_argument("--one", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.one:
    print(json.dumps(_one(json.loads(args.one))))
    return
  if args.quick:
    depths, depth_size, sizes, width, batch, preset_names = (2, 8), 32, (), 32, 8, []
  else:
    depths, depth_size, sizes, width, batch = DEPTHS, DEPTH_SIZE, args.sizes, WIDTH, BATCH
    preset_names = args.presets
  depth_rows = [measure(m, d, depth_size, width=width, batch=batch)
                for d in depths for m in MODES]
  size_rows = [measure(m, SIZE_DEPTH, s, width=width, batch=SIZE_BATCH) for s in sizes
               for m in MODES]
  preset_rows = _preset_rows(preset_names)
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  meta = {"cpu": timing.cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
          "command": "python -m benchmarks.bench_memory " + " ".join(argv or sys.argv[1:])}
  results = {"meta": meta, "depth": depth_rows, "size": size_rows, "presets": preset_rows}
  markdown = render(results)
  write_results("memory_cpu", results, markdown,
                os.path.join(RESULTS, "quick") if args.quick else RESULTS)
  print(markdown)


def render(results):
  """memory_cpu.md from the results."""
  meta, depth_rows = results["meta"], results["depth"]
  size_rows, preset_rows = results["size"], results["presets"]
  first = depth_rows[0]
  depths = sorted({r["depth"] for r in depth_rows})
  lines = ["# Glow's backprop modes on CPU: a training step's working memory and time", "",
           f"{meta['cpu']}, {meta['cores']} cores. Mixer inverse_conv, {first['levels']} levels, "
           f"width {first['width']}. Memory: the second compiled step's peak resident set over "
           "the resident set before it (a fresh process per row; benchmarks/bench_memory.py). "
           "Step time: median of 3 steps, as a ratio to stored.", ""]
  lines += _table(depth_rows, "depth", f"Depth at {first['size']}², batch {first['batch']}")
  lines.append("")
  for mode in MODES:
    lines.append(f"- {mode}: memory × {growth(depth_rows, mode):.2f} from depth "
                 f"{depths[0]} to {depths[-1]}")
  if size_rows:
    lines += [""] + _table(size_rows, "size",
                           f"Image size at depth {SIZE_DEPTH}, batch {SIZE_BATCH}")
  if preset_rows:
    lines += [""] + _preset_table(preset_rows) + [
        "", "Images per GPU: (80 GB - 16 bytes per parameter - the step's fixed part) / MB per "
        "image, from CPU measurements: an estimate, not a GPU measurement."]
  if results.get("remeasured"):
    lines += ["", results["remeasured"]]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
