"""The model table (benchmarks/results/models_cpu.{json,md}): Glow with each mixer against tfp's
Glow by image size (the slides' Tables 7/8), inverse_conv by kernel size (Table 10), growth
exponents and ratios."""

import json
import os

from benchmarks import RESULTS
from benchmarks import bench_models

GPU_NOTE = ("GPU columns: not measured - the GPU machines we measure on have no TensorFlow. The "
            "CUDA solve itself is measured against cuDNN at the op level by `make gpu-bench` "
            "(benchmarks/results/ops_gpu.md, which names its GPU).")


def _fmt(summary):
  return f"{summary['median_ms']:.1f} ({summary['min_ms']:.1f}-{summary['max_ms']:.1f})"


def size_markdown(rows, depth, hidden, repeats):
  lines = [f"Tables 7/8 form: K = {depth} steps per level, L = 2 levels, hidden {hidden}, "
           f"3 channels, float32; times in ms, median (min-max) of {repeats}; batch = samples "
           "drawn, scaled down from the slides' 100 for this CPU. Memory: peak resident set "
           "(VmHWM) of a fresh process that builds the model and runs one training step and one "
           "sampling call (includes TensorFlow itself).",
           "", "| model | input | batch | params | sampling | forward (log-prob) | "
           "training step | peak memory (GB) | sampling GPU |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    memory = "—" if r["peak_rss_gb"] is None else f"{r['peak_rss_gb']:.2f}"
    lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {r['params']:,} | "
                 f"{_fmt(r['sample'])} | {_fmt(r['forward'])} | {_fmt(r['train_step'])} | "
                 f"{memory} | not measured |")
  return "\n".join(lines)


def kernel_markdown(rows, depth, hidden, repeats):
  lines = [f"Table 10 form (Inverse-Flow): K = {depth}, L = 2, hidden {hidden}, input "
           f"{rows[0]['size']}x{rows[0]['size']}, batch {rows[0]['batch']}; ms, median "
           f"(min-max) of {repeats}.", "",
           "| kernel | params (M) | sampling | forward (log-prob) | training step |",
           "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['kernel_size']}x{r['kernel_size']} | {r['params'] / 1e6:.3f} | "
                 f"{_fmt(r['sample'])} | {_fmt(r['forward'])} | {_fmt(r['train_step'])} |")
  return "\n".join(lines)


def reading(size_rows, kernel_rows):
  """Ratios to the plain convolution and fitted growth exponents."""
  lines = ["", "Growth (least-squares exponent b of time ~ size^b, per image, over the sizes "
           "measured):"]
  for name in sorted({r["model"] for r in size_rows}):
    rows = [r for r in size_rows if r["model"] == name]
    if len(rows) < 2:
      continue
    sizes = [r["size"] for r in rows]
    parts = []
    for measure in ("sample", "forward", "train_step"):
      per_image = [r[measure]["median_ms"] / r["batch"] for r in rows]
      parts.append(f"{measure} {bench_models.fit_exponent(sizes, per_image):.2f}")
    lines.append(f"- {name}: " + ", ".join(parts))
  if len(kernel_rows) >= 2:
    ks = [r["kernel_size"] for r in kernel_rows]
    parts = [f"{m} {bench_models.fit_exponent(ks, [r[m]['median_ms'] for r in kernel_rows]):.2f}"
             for m in ("sample", "forward", "train_step")]
    lines.append("- inverse_conv vs kernel size: " + ", ".join(parts))
  by = {(r["model"], r["size"]): r for r in size_rows}
  lines.append("")
  lines.append("Ratios at each size (median times):")
  for size in sorted({r["size"] for r in size_rows}):
    def ratio(a, b, m):
      if (a, size) in by and (b, size) in by:
        return by[(a, size)][m]["median_ms"] / by[(b, size)][m]["median_ms"]
      return float("nan")
    lines.append(
        f"- {size}x{size}: inverse_conv/1x1 forward {ratio('inverse_conv', '1x1', 'forward'):.2f}, "
        f"sampling {ratio('inverse_conv', '1x1', 'sample'):.2f}; finc/1x1 forward "
        f"{ratio('finc', '1x1', 'forward'):.2f}, sampling {ratio('finc', '1x1', 'sample'):.2f}; "
        f"1x1/tfp_glow training step {ratio('1x1', 'tfp_glow', 'train_step'):.2f}")
  return "\n".join(lines)


def write(out, meta, depth, hidden, repeats, size_rows, kernel_rows):
  text = "\n\n".join([f"Machine: {meta['cpu']}, {meta['cores']} cores, TensorFlow "
                      f"{meta['tensorflow']}.", size_markdown(size_rows, depth, hidden, repeats),
                      kernel_markdown(kernel_rows, depth, hidden, repeats),
                      reading(size_rows, kernel_rows), GPU_NOTE])
  with open(os.path.join(out, "models_cpu.json"), "w") as f:
    json.dump({"meta": meta, "depth": depth, "hidden": hidden, "repeats": repeats,
               "sizes": size_rows, "kernels": kernel_rows}, f, indent=1)
  with open(os.path.join(out, "models_cpu.md"), "w") as f:
    f.write(text + "\n")
  return text


def remeasure_memory():
  with open(os.path.join(RESULTS, "models_cpu.json")) as f:
    saved = json.load(f)
  for row in saved["sizes"]:
    row["peak_rss_gb"] = bench_models.peak_memory_gb(row["model"], row["size"], saved["depth"],
                                                     saved["hidden"])
    print(f"{row['model']} {row['size']}: {row['peak_rss_gb']}", flush=True)
  print(write(RESULTS, saved["meta"], saved["depth"], saved["hidden"], saved["repeats"],
               saved["sizes"], saved["kernels"]))
