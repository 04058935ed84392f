"""The documents quote benchmarks/results/ and nothing else: `python -m benchmarks.readme` rewrites
every block between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in README.md and
docs/*.md from the results files; tests/test_readme_numbers.py fails when a document differs from
what this would write.
"""

import glob
import json
import math
import os
import re
import sys

from benchmarks import separation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
README = os.path.join(ROOT, "README.md")
DOCUMENTS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
BLOCK = re.compile(r"(<!-- results:(\w+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)
# Mixers whose convolution sees a k x k neighbourhood, and the per-pixel ones.
SPATIAL = ("emerging", "finc", "inverse_conv")
PER_PIXEL = ("1x1", "nxn")


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
  paper = [r for r in rows if r["set"] != "Glow CIFAR-10"]
  ratios = ", ".join(f"{r['solve_ratio']:.1f}×" for r in glow)
  solves = ", ".join(f"{r['times']['solve']['device_us']:.0f}" for r in glow)
  convs = ", ".join(f"{r['times']['conv']['device_us']:.0f}" for r in glow)
  text = (f"In device time (`ops_gpu.md`, {results['device']}: CUDA-graph replay, no host "
          f"dispatch) the solve takes {ratios} the time of cuDNN's convolution of the same shape "
          f"at the three Glow CIFAR-10 levels ({solves} µs against {convs} µs at batch "
          f"{glow[0]['batch']}); a training step's solve, adjoint and filter gradient take "
          f"{_span([r['train_ratio'] for r in glow], 1)} cuDNN's convolution, input gradient and "
          f"filter gradient; on Inverse-Flow's Table 7/10 shapes the solve takes "
          f"{_span([r['solve_ratio'] for r in paper], 1)}. That is "
          f"{_span([r['floor_ratio'] for r in rows], 0)} its floor (bytes at the copy bandwidth "
          "or H+W−1 diagonals of one barrier each, whichever binds). Per call, as an eager caller "
          "pays it with PyTorch's dispatch, the ratio is "
          f"{_span([r['call_ratio'] for r in rows], 1)}. The targets (1.0× at Glow, 1.5× at the "
          "paper shapes) are not met.")
  return _wrap(text)


def gpu_peers():
  results = _load("gpu_peers.json")
  ratios = {name: [r["peers"][name]["device_us"] / r["ours"]["device_us"]
                   for r in results["timings"] if "device_us" in r["peers"].get(name, {})]
            for name in results["peers"]}
  wrong = {name: sorted({c["shape"][3] for c in results["checks"]
                         if c["peer"] == name and c["verdict"] == "WRONG"})
           for name in results["peers"]}
  parts = [f"{name} {_span(ratios[name], 0)} ours in device time" +
           (f" and wrong at C = {', '.join(map(str, wrong[name]))}" if wrong[name] else
            ", exact") for name in results["peers"]]
  text = (f"The papers' own CUDA inverses, built from their repositories and timed on the same GPU "
          f"(`gpu_peers.md`, `python -m benchmarks.bench_gpu_peers`): {'; '.join(parts)}. Both "
          "launch and synchronise once per anti-diagonal and channel of a group.")
  return _wrap(text)


def ops_gpu_docs():
  results = _load("ops_gpu.json")
  lines = [_wrap(f"{results['device']}, `benchmarks/results/ops_gpu.md`; float32, µs per call "
                 "in device time unless marked; cuDNN in its faster layout per call."), "",
           "| set | B×H×W×C, k | cuDNN conv | solve | adjoint | cuDNN filter grad | solve/conv | "
           "train step | floor (binds) | solve/floor | float64 solve/conv | per call solve/conv |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    t, f = r["times"], r["floors"]
    lines.append(
        f"| {r['set']} | {r['batch']}×{r['size']}²×{r['channels']}, {r['k']} | "
        f"{t['conv']['device_us']:.1f} | {t['solve']['device_us']:.1f} | "
        f"{t['adjoint']['device_us']:.1f} | {t['filter_grad']['device_us']:.1f} | "
        f"{r['solve_ratio']:.2f}× | {r['train_ratio']:.2f}× | {f['floor_us']:.1f} "
        f"({f['binding']}) | {r['floor_ratio']:.0f}× | {r['f64_ratio']:.2f}× | "
        f"{r['call_ratio']:.2f}× |")
  return "\n".join(lines)


def gpu_levers():
  levers, ops = _load("ops_gpu_levers.json"), _load("ops_gpu.json")
  shapes = list(levers["levers"][0]["before"])
  lines = [_wrap(f"Side by side on one warm {levers['device']} ({levers['date']}): "
                 f"{levers['method']}. Solve device time in µs, before → after, and the prepare "
                 "kernel's ncu duration after the change at the three shapes:"), "",
           "| change | " + " | ".join(shapes) + " | prepare kernel after |",
           "|---|" + "---|" * (len(shapes) + 1)]
  for lever in levers["levers"]:
    cells = [f"{lever['before'][s]['solve']:.1f} → {lever['after'][s]['solve']:.1f}" for s in shapes]
    lines.append(f"| {lever['lever']} | " + " | ".join(cells) + " | " +
                 " / ".join(f"{us:.1f}" for us in lever["prepare_kernel_us_ncu"]) + " µs |")
  glow = [r for r in ops["rows"] if r["set"] == "Glow CIFAR-10"][0]
  diagonals = 2 * glow["size"] - 1
  kernel_us = levers["levers"][-1]["solve_kernel_us_ncu"][0]
  barrier_ns = 1e3 * ops["barrier_us"][str(glow["plan"]["threads"])]
  ncu, stalls = levers["ncu_solve_32x12"], levers["ncu_stalls_per_issue_32x12"]
  top = sorted(stalls.items(), key=lambda kv: -kv[1])[:4]
  lines += ["", _wrap(
      f"At {glow['size']}²×{glow['channels']} the solve kernel takes {kernel_us:.0f} µs (ncu) for "
      f"{diagonals} diagonals, {kernel_us / diagonals:.2f} µs each, against {barrier_ns:.0f} ns "
      f"measured for one barrier plus a dependent shared-memory round trip with "
      f"{glow['plan']['threads']} threads. The block has {glow['plan']['threads'] // 32} warps, "
      f"{ncu['Active Warps Per Scheduler']:.0f} per scheduler, {ncu['Eligible Warps Per Scheduler']:.2f} "
      f"eligible; a warp issues once every {ncu['Warp Cycles Per Issued Instruction']:.0f} cycles "
      f"and {ncu['No Eligible']:.0f} % of cycles issue nothing. Stalls per issued instruction: " +
      ", ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in top) +
      f" cycles. One block per image: {glow['batch']} blocks for the whole GPU.")]
  return "\n".join(lines)


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


def ops_dense():
  rows = _load("ops_cpu.json")["rows"]
  built = [r for r in rows if r.get("inverse_dense_ms")]
  not_built = [r for r in rows if not r.get("inverse_dense_ms")]
  hwc = lambda r: r["size"] ** 2 * r["channels"]
  largest = [r for r in built if hwc(r) == max(map(hwc, built))]
  text = (f"The compiled solve takes {_span([r['custom_over_conv'] for r in rows])} the time of "
          "oneDNN's convolution of the same shape (with the backward pass: "
          f"{_span([r['custom_fwd_bwd_over_conv_fwd_bwd'] for r in rows])}; row blocking turns "
          "most of the work into register-blocked multiply-adds). A dense "
          "`tf.linalg.triangular_solve` on the [HWC, HWC] matrix takes "
          f"{_span([r['inverse_dense_ms'] / r['inverse_custom_ms'] for r in built], 0)} the "
          f"compiled solve's time where it was built (up to HWC = {hwc(largest[0]):,}: "
          f"{', '.join(map(_shape, largest))}, a {_gigabytes(largest[0])} float32 matrix)")
  if not_built:
    smallest = min(not_built, key=hwc)
    text += f"; at {_shape(smallest)} the matrix alone would take {_gigabytes(smallest)}"
  return _wrap(text + ".")


def _shape(row):
  return f"{row['size']}×{row['size']}×{row['channels']}"


def _gigabytes(row):
  return f"{4 * (row['size'] ** 2 * row['channels']) ** 2 / 1e9:.1f} GB"


def _exponent(xs, ys):
  """b in y ~ a * x^b, least squares in log-log (benchmarks.bench_models.fit_exponent)."""
  u, v = [math.log(x) for x in xs], [math.log(y) for y in ys]
  mu, mv = sum(u) / len(u), sum(v) / len(v)
  return (sum((a - mu) * (b - mv) for a, b in zip(u, v)) /
          sum((a - mu) ** 2 for a in u))


def _ratios(rows, a, b, measure):
  by = {(r["model"], r["size"]): r[measure]["median_ms"] for r in rows}
  return [by[(a, s)] / by[(b, s)] for (m, s) in by if m == a and (b, s) in by]


def models_cpu():
  results = _load("models_cpu.json")
  rows, kernels = results["sizes"], results["kernels"]
  measures = ("sample", "forward", "train_step")
  models = sorted({r["model"] for r in rows})
  exponents = [_exponent([r["size"] for r in rows if r["model"] == m],
                         [r[x]["median_ms"] / r["batch"] for r in rows if r["model"] == m])
               for m in models for x in measures]
  k_exponents = [_exponent([r["kernel_size"] for r in kernels],
                           [r[x]["median_ms"] for r in kernels]) for x in measures]
  sizes = sorted({r["size"] for r in rows})
  by = {(r["model"], r["size"]): r for r in rows}
  first, last = by[("1x1", sizes[0])], by[("1x1", sizes[-1])]
  memory = [r["peak_rss_gb"] for r in rows]
  extra = lambda m: [by[(m, s)]["peak_rss_gb"] - by[("1x1", s)]["peak_rss_gb"] for s in sizes]
  grow = (f"Time per image grows as size^{_range(exponents, 1)} for every layer (the "
          "least-squares exponent; pixels grow as size²)")
  if max(exponents) < 2.05:
    grow += ", so the solve adds no worse-than-linear cost in pixels"
  bullets = [
      grow + ".",
      "Inverse-Flow (`inverse_conv`) vs Glow's 1×1 at equal architecture: density evaluation "
      f"{_span(_ratios(rows, 'inverse_conv', '1x1', 'forward'))}, sampling "
      f"{_span(_ratios(rows, 'inverse_conv', '1x1', 'sample'))} (a plain convolution); FInC "
      f"(`finc`) is the mirror image: evaluation {_span(_ratios(rows, 'finc', '1x1', 'forward'))}, "
      f"sampling {_span(_ratios(rows, 'finc', '1x1', 'sample'))}.",
      f"Kernel size {kernels[0]['kernel_size']} → {kernels[-1]['kernel_size']} "
      f"({kernels[0]['size']}×{kernels[0]['size']}): parameters "
      f"{kernels[0]['params'] / 1e6:.2f} M → {kernels[-1]['params'] / 1e6:.2f} M, time grows as "
      f"k^{_range(k_exponents, 1)} here (the "
      "coupling networks dominate at this width).",
      "Our Glow with the 1×1 mixer takes "
      f"{_span(_ratios(rows, '1x1', 'tfp_glow', 'train_step'))} the training-step time of "
      "`tfp.bijectors.Glow` at the same configuration (levels, steps, hidden width), over "
      f"{sizes[0]}–{sizes[-1]} px.",
      "Peak memory (fresh process, one training step + one sampling call) is "
      f"{_range(memory, 2)} GB for every layer and size here, almost all of it the TensorFlow "
      "runtime: the solve needs no B·C·k²·H·W buffers (inverse_conv "
      f"+{_range(extra('inverse_conv'), 2)} GB over 1×1, tfp.bijectors.Glow "
      f"+{_range(extra('tfp_glow'), 2)} GB).",
      "GPU columns: not measured (no TensorFlow on the GPU machines we measure on); the op-level "
      "GPU numbers are below."]
  intro = (f"**Model level** (`models_cpu.md`, {results['meta']['cpu']}, "
           f"{results['meta']['cores']} cores; Tables 7/8 and 10 of Inverse-Flow in form; K = "
           f"{results['depth']} steps per level, L = 2 levels, hidden {results['hidden']}, 3 "
           f"channels; batch {first['batch']} at {sizes[0]}×{sizes[0]} scaled down to "
           f"{last['batch']} at {sizes[-1]}×{sizes[-1]}):")
  return _wrap(intro) + "\n" + "\n".join(_bullet(b) for b in bullets)


def _range(values, digits):
  low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
  return low if low == high else f"{low}–{high}"


def mixed_cpu():
  results = _load("mixed_cpu.json")
  meta, rows = results["meta"], results["rows"]
  flags = meta.get("cpu_bf16_flags", "unknown")
  instructions = ("no bfloat16 instructions" if flags == "none" else
                  f"bfloat16 instructions: {flags}")
  ratios = [r["ratio"] for r in rows]
  verdict = ("*slower*" if min(ratios) > 1 else "faster" if max(ratios) < 1 else
             "slower or faster depending on the width")
  each = " and ".join(f"{r['ratio']:.1f}× (hidden {r['hidden']})" for r in rows)
  return _wrap(f"On the host that was measured ({meta['cpu']}, {meta['cores']} cores, "
               f"{instructions}) mixed_bfloat16 is {verdict}: a Glow training step takes {each} "
               "the float32 time (`benchmarks/results/mixed_cpu.md`, "
               f"`{results['command']}`).")


def portable():
  results = _load("ops_cpu_portable.json")
  meta, rows = results["meta"], results["rows"]
  by_path = {path: name for name, path in meta["paths"].items()}
  native, earlier = by_path["native"], by_path["native (before dispatch)"]
  chosen = meta["paths"]["portable"]
  ratio = lambda other: _span([r["portable_ms"] / r[f"{other}_ms"] for r in rows])
  text = (f"On {meta['cpu']} ({meta['cores']} cores), where the portable library chose its "
          f"`{chosen}` path, it took {ratio(native)} the time of a native build of the same "
          f"sources and {ratio(earlier)} that of the earlier `-march=native` library "
          "(`benchmarks/results/ops_cpu_portable.md`)")
  if chosen == "avx2":
    text += ", whose AVX-512-sized vectors were split and spilled on AVX2"
  return _wrap(text + ".")


def _quality_rows(dataset):
  rows = {r["model"]: r for r in dataset["rows"]}
  mixers = sorted((r for name, r in rows.items() if name != "tfp_glow"), key=lambda r: r["mean"])
  return rows, mixers


def _widest(rows):
  """The largest separation between any two of `rows`, in standard deviations."""
  return max(abs(separation(a, b)) for a in rows for b in rows if a is not b)


def _lead(rows):
  """How far the k x k mixers lead the per-pixel ones, in bits/dim: (lowest, highest)."""
  gaps = [rows[b]["mean"] - rows[a]["mean"] for a in SPATIAL for b in PER_PIXEL
          if a in rows and b in rows]
  return min(gaps), max(gaps)


def _baseline(dataset, main_job=None):
  better = [r["model"] for r in dataset["rows"] if r["mean"] < dataset["baseline_bits_per_dim"]]
  steps = dataset["setting"]["steps"]
  if len(better) == len(dataset["rows"]):
    return (f"every model is below the per-pixel baseline "
            f"({dataset['baseline_bits_per_dim']:.3f})")
  text = (f"{', '.join(better) if better else 'none'} "
          f"{'is' if len(better) == 1 else 'are' if better else 'has'} "
          f"{'below' if better else 'yet passed'} the per-pixel baseline "
          f"({dataset['baseline_bits_per_dim']:.3f}) at {steps} steps")
  if main_job is not None:
    passed = main_job["test_bits_per_dim"] < main_job["baseline_bits_per_dim"]
    text += (f" (the {main_job['steps']}-step main job above "
             f"{'has' if passed else 'has not either'})")
  return text


def quality_summary():
  results = {r["dataset"]: r for r in _load("quality.json")["results"]}
  digits, patches = results["digits"], results["photo_patches"]
  rows, mixers = _quality_rows(digits)
  patch_rows, _ = _quality_rows(patches)
  low, high = _lead(patch_rows)
  text = (f"Short runs (digits {digits['setting']['steps']} steps, photo patches "
          f"{patches['setting']['steps']} steps), read them as such; separations are in standard "
          "deviations of the difference of two means. On the digits the mixers lie within "
          f"{_widest(mixers):.1f} standard deviations of one another ({mixers[0]['model']} best, "
          f"{separation(mixers[0], mixers[1]):.1f} ahead of {mixers[1]['model']}), "
          f"`tfp.bijectors.Glow` is {separation(mixers[0], rows['tfp_glow']):.1f} standard "
          "deviations behind the best, "
          f"and {_baseline(digits, _load('main_job.json'))}. On the photo patches the k×k mixers "
          f"({', '.join(SPATIAL)}) {_lead_words(low, high, '1×1 and n×n')} "
          f"({separation(patch_rows['inverse_conv'], patch_rows['1x1']):.1f} standard deviations "
          "for inverse_conv vs 1×1) and lie within "
          f"{_widest([patch_rows[m] for m in SPATIAL]):.1f} standard deviations of one another.")
  return _wrap(text)


def _lead_words(low, high, whom):
  span = _range([low, high], 1)
  return (f"lead {whom} by {span} bits/dim" if low > 0 else
          f"do not all lead {whom} (differences {span} bits/dim)")


def _listing(rows):
  return ", ".join(f"{r['model']} {r['mean']:.3f} ± {r['std']:.3f}" for r in rows)


def quality_docs():
  results = {r["dataset"]: r for r in _load("quality.json")["results"]}
  digits, patches = results["digits"], results["photo_patches"]
  rows, mixers = _quality_rows(digits)
  patch_rows, patch_mixers = _quality_rows(patches)
  spatial = [patch_rows[m] for m in SPATIAL]
  pairs = [(a, b) for i, a in enumerate(spatial) for b in spatial[i + 1:]]
  low, high = _lead(patch_rows)
  glow, ours = patch_rows["1x1"], patch_rows["inverse_conv"]
  h, w, _ = digits["image_shape"]
  seeds = ", ".join(f"{r['test_bits_per_dim']:.3f}" for r in glow["runs"])
  bullets = [
      f"Digits ({_setting(digits)}; best first): {_listing(mixers)}. The mixers "
      f"lie within {_widest(mixers):.1f} standard deviations of one another; "
      f"{mixers[0]['model']} leads {mixers[1]['model']} by "
      f"{separation(mixers[0], mixers[1]):.1f}, and inverse_conv and 1x1 are "
      f"{_apart(rows['inverse_conv'], rows['1x1'])}. `tfp.bijectors.Glow` is behind at "
      f"{rows['tfp_glow']['mean']:.3f} ± {rows['tfp_glow']['std']:.3f} "
      f"({separation(mixers[0], rows['tfp_glow']):.1f} standard deviations behind "
      f"{mixers[0]['model']}). With "
      f"{h}×{w} images and {digits['setting']['levels']} levels the spatial reach of a k × k "
      "mixer has little to work with.",
      f"Photo patches ({_setting(patches)}; best first): "
      f"{_listing(sorted(patches['rows'], key=lambda r: r['mean']))}. The k × k mixers "
      f"{_lead_words(low, high, 'the per-pixel ones')}; inverse_conv vs 1x1: "
      f"{glow['mean'] - ours['mean']:.2f} bits/dim, {separation(ours, glow):.1f} standard "
      f"deviations (1x1's seeds: {seeds}). "
      "Among the k × k mixers the separations are "
      f"{_range([abs(separation(a, b)) for a, b in pairs], 1)} standard deviations "
      f"({', '.join(_pair(a, b) for a, b in pairs)}). These are short runs; longer ones may "
      "narrow the gap."]
  return "\n".join(_bullet(b) for b in bullets)


def _setting(dataset):
  s, (h, w, _) = dataset["setting"], dataset["image_shape"]
  return (f"{h}×{w}, {s['levels']} levels × {s['depth']} steps, width {s['hidden']}, "
          f"{s['steps']} training steps, {len(dataset['rows'][0]['runs'])} seeds")


def _apart(a, b):
  ahead = a if a["mean"] <= b["mean"] else b
  return f"{abs(separation(a, b)):.1f} apart ({ahead['model']} ahead)"


def _pair(a, b):
  return f"{a['model']} vs {b['model']} {abs(separation(a, b)):.1f}"


def digits_baseline():
  digits = {r["dataset"]: r for r in _load("quality.json")["results"]}["digits"]
  return _wrap(f"For the digits the baseline is {digits['baseline_bits_per_dim']:.3f} bits/dim "
               f"({digits['train_images']:,} training and {digits['test_images']} test images; "
               "`benchmarks/results/quality.json`).")


def memory_cpu():
  results = _load("memory_cpu.json")
  meta, depth, presets = results["meta"], results["depth"], results["presets"]
  depths = sorted({r["depth"] for r in depth})

  def at(mode, d):
    return next(r for r in depth if r["mode"] == mode and r["depth"] == d)

  growth = {m: at(m, depths[-1])["step_mb"] / at(m, depths[0])["step_mb"]
            for m in ("stored", "checkpointed", "reversible")}
  ratios = {m: [at(m, d)["step_ms"] / at("stored", d)["step_ms"] for d in depths]
            for m in ("checkpointed", "reversible")}
  first = depth[0]
  text = (f"Measured on {meta['cpu']} ({meta['cores']} cores; "
          "`benchmarks/results/memory_cpu.md`, `python -m benchmarks.bench_memory`): from depth "
          f"{depths[0]} to {depths[-1]} (Glow at {first['size']}², {first['levels']} levels, "
          f"width {first['width']}, batch {first['batch']}) a training step's working memory "
          f"grows × {growth['stored']:.1f} stored, × {growth['checkpointed']:.1f} checkpointed "
          f"and × {growth['reversible']:.1f} reversible; a step takes "
          f"{_range(ratios['checkpointed'], 2)}× stored's time checkpointed and "
          f"{_range(ratios['reversible'], 2)}× reversible.")
  fits = []
  for name in sorted({r["preset"] for r in presets}, key=[r["preset"] for r in presets].index):
    per_mode = {r["mode"]: r["images_per_gpu"] for r in presets if r["preset"] == name}
    fits.append(f"{name} " + ", ".join(f"{per_mode[m]} {m}" for m in per_mode))
  if fits:
    text += (" Images per 80 GB GPU, estimated from the CPU measurements of one step of each "
             "preset at its real size (not measured on a GPU): " + "; ".join(fits) + ".")
  return _wrap(text)


BLOCKS = {"memory_cpu": memory_cpu, "ops_cpu": ops_cpu, "ops_dense": ops_dense, "models_cpu": models_cpu,
          "ops_gpu": ops_gpu, "gpu_peers": gpu_peers,
          "ops_gpu_docs": ops_gpu_docs, "gpu_levers": gpu_levers, "mixed_cpu": mixed_cpu, "portable": portable,
          "quality": quality, "quality_summary": quality_summary, "quality_docs": quality_docs,
          "digits_baseline": digits_baseline, "main_job": main_job}


def _wrap(text, width=100, first="", rest=""):
  """`text` in lines of at most `width` columns, the first prefixed by `first`, the others by
  `rest` (a Markdown list item: "- ", "  ")."""
  lines, line, prefix = [], "", first
  for word in text.split():
    if line and len(prefix) + len(line) + 1 + len(word) > width:
      lines.append(prefix + line)
      line, prefix = word, rest
    else:
      line = f"{line} {word}" if line else word
  return "\n".join(lines + [prefix + line])


def _bullet(text):
  return _wrap(text, first="- ", rest="  ")


def render(text):
  """The text with every results block regenerated; unknown block names are an error."""
  def block(match):
    name = match.group(2)
    if name not in BLOCKS:
      raise ValueError(f"block results:{name} has no generator in benchmarks/readme.py")
    return f"{match.group(1)}{BLOCKS[name]()}\n{match.group(4)}"
  return BLOCK.sub(block, text)


def main():
  for path in DOCUMENTS:
    with open(path) as f:
      text = f.read()
    new = render(text)
    if new != text:
      with open(path, "w") as f:
        f.write(new)
    print(f"{os.path.relpath(path, ROOT)}: {len(BLOCK.findall(new))} results blocks, "
          f"{'rewritten' if new != text else 'already up to date'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
