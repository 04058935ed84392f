"""The README quotes benchmarks/results/ and nothing else: `python -m benchmarks.readme` rewrites
every block between `<!-- results:NAME -->` and `<!-- /results:NAME -->` from the results
files; tests/test_readme_numbers.py fails when the README differs from what this would write.
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
README = os.path.join(ROOT, "README.md")
BLOCK = re.compile(r"(<!-- results:(\w+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def _load(name):
  with open(os.path.join(RESULTS, name)) as f:
    return json.load(f)


def ops_cpu():
  results = _load("ops_cpu.json")
  meta, rows = results["meta"], results["rows"]
  lines = [f"Op level (`ops_cpu.md`, {meta['cpu']}, {meta['cores']} cores, TF "
           f"{meta['tensorflow']}, batch {rows[0]['batch']}, k = {rows[0]['k']}, median of "
           f"{meta['repeats']}, ms):", "",
           "| H=W × C | conv | inverse (compiled) | inverse (TF path) | conv+bwd | inverse+bwd | "
           "inverse/conv | (inv+bwd)/(conv+bwd) | TF/compiled |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['size']} × {r['channels']} | {r['conv_ms']:.2f} | "
                 f"{r['inverse_custom_ms']:.2f} | {r['inverse_tf_ms']:.2f} | "
                 f"{r['conv_fwd_bwd_ms']:.2f} | {r['inverse_custom_fwd_bwd_ms']:.2f} | "
                 f"{r['custom_over_conv']:.2f}× | {r['custom_fwd_bwd_over_conv_fwd_bwd']:.2f}× | "
                 f"{r['tf_over_custom']:.1f}× |")
  return "\n".join(lines)


def _span(values, digits=2):
  low, high = min(values), max(values)
  return f"{low:.{digits}f}×" if f"{low:.{digits}f}" == f"{high:.{digits}f}" else \
      f"{low:.{digits}f}–{high:.{digits}f}×"


def ops_gpu():
  results = _load("ops_gpu.json")
  rows = results["rows"]
  glow = [r for r in rows if r["set"] == "Glow CIFAR-10"]
  small = [r for r in rows if r["set"] != "Glow CIFAR-10" and r["size"] <= 64]
  large = [r for r in rows if r["size"] > 64]
  per_level = ", ".join(f"{r['solve_ratio']:.2f}×" for r in glow)
  times = ", ".join(f"{1e3 * r['ms']['solve']:.0f}" for r in glow)
  text = (f"In `ops_gpu.md` ({results['device']}, median of {results['repeats']}) the solve "
          f"takes {per_level} the time of cuDNN's convolution of the same shape at the three "
          f"Glow CIFAR-10 levels ({times} µs at batch {glow[0]['batch']}), "
          f"{_span([r['solve_ratio'] for r in small], 1)} on Inverse-Flow's Table 7/10 images "
          f"up to 64², {_span([r['solve_ratio'] for r in large], 1)} at 128²–256² (tiled); a "
          f"training step's three calls take {_span([r['train_ratio'] for r in rows])} "
          "cuDNN's.")
  return _wrap(text)


def quality():
  results = _load("quality.json")
  lines = ["| data | model | parameters | test bits/dim (mean ± std, "
           f"{len(results['results'][0]['rows'][0]['runs'])} seeds) |", "|---|---|---|---|"]
  for dataset in results["results"]:
    for r in sorted(dataset["rows"], key=lambda r: (r["mean"] != r["mean"], r["mean"])):
      lines.append(f"| {dataset['dataset']} | {r['model']} | {r['params']:,} | "
                   f"{r['mean']:.3f} ± {r['std']:.3f} |")
    lines.append(f"| {dataset['dataset']} | per-pixel histogram (baseline) | — | "
                 f"{dataset['baseline_bits_per_dim']:.3f} |")
  return "\n".join(lines)


def main_job():
  metrics = _load("main_job.json")
  better = metrics["baseline_bits_per_dim"] - metrics["test_bits_per_dim"]
  verdict = (f"{better:.2f} bits/dim better than" if better > 0 else
             f"{-better:.2f} bits/dim WORSE than")
  return _wrap(
      f"`make train` ({metrics['params']:,} parameters, {metrics['steps']} steps, "
      f"{metrics['n_bins']} grey levels) ends at **{metrics['test_bits_per_dim']:.2f} test "
      f"bits/dim**, {verdict} the per-pixel histogram baseline "
      f"({metrics['baseline_bits_per_dim']:.2f}) on the same test split.")


BLOCKS = {"ops_cpu": ops_cpu, "ops_gpu": ops_gpu, "quality": quality, "main_job": main_job}


def _wrap(text, width=100):
  lines, line = [], ""
  for word in text.split():
    if line and len(line) + 1 + len(word) > width:
      lines.append(line)
      line = word
    else:
      line = f"{line} {word}" if line else word
  return "\n".join(lines + [line])


def render(readme_text):
  """The README with every results block regenerated; unknown block names are an error."""
  def block(match):
    name = match.group(2)
    if name not in BLOCKS:
      raise ValueError(f"README block results:{name} has no generator in benchmarks/readme.py")
    return f"{match.group(1)}{BLOCKS[name]()}\n{match.group(4)}"
  return BLOCK.sub(block, readme_text)


def main():
  with open(README) as f:
    text = f.read()
  new = render(text)
  if new != text:
    with open(README, "w") as f:
      f.write(new)
  print(f"README.md: {len(BLOCK.findall(new))} results blocks, "
        f"{'rewritten' if new != text else 'already up to date'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
