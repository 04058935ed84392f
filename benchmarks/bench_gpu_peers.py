"""The published GPU inverses against our solve and cuDNN: `python -m benchmarks.bench_gpu_peers`.

    python -m benchmarks.bench_gpu_peers [--peer-dir DIR] [--check-only] [--repeats N]
                                         [--peer-repeats N] [--budget-s S] [--as-published]

Two papers publish CUDA inverses of a causal convolution, both PyTorch extensions:
  FInCFlow      fastflow/utils/fastflow_cuda_inverse/cinc_cuda_level2.cpp, ..._kernel_level2.cu
  Inverse-Flow  inf/utils/inv_conv_cuda/inv_conv_with_bp_general.cpp, ..._bp_kernel_general.cu
Their code is never committed here. Put your own checkout of each under DIR (default peers/,
git-ignored), keeping the repository paths:
    git clone https://github.com/aditya-v-kallappa/FInCFlow peers/FInCFlow
    git clone https://github.com/girish-lab/Inverse-Flow peers/Inverse-Flow
or export only the files above and write DIR/<name>/COMMIT as "<commit hash> <owner/name>". They
are built with torch.utils.cpp_extension into build/peers/, in parallel; a peer that fails to build
is reported with the compiler's error lines and skipped. Their `AT_DISPATCH_FLOATING_TYPES(
t.type(), ...)` no longer compiles against current PyTorch (2.11: no conversion from
DeprecatedTypeProperties to ScalarType), so by default a header of ours is force-included that
lets the macro take either; their kernels are untouched. --as-published builds without it.

What they compute (read from their sources; the two share one scheme):
- `inverse(y, weight, out)` returns [out]. y, out: contiguous NCHW CUDA tensors (float32/64),
  C divisible by 4: the channels form 4 independent groups of C/4. Batch <= 1024 (one thread
  per image in a block). weight (C, C/4, k, k): weight[o, j, p, q] couples output channel o to
  input channel j of o's group at offset (p-k+1, q-k+1): the top-left causal map of a grouped
  conv2d (groups=4) padded k-1 above and to the left. The same-pixel diagonal is an implicit 1
  (never read); the same-pixel block must be strictly lower triangular (j < o in the group), as
  the entries above multiply values not solved yet, so `out` must start finite (zeros, as their
  layers pass). One launch per (anti-diagonal, channel of a group), each followed by
  cudaDeviceSynchronize(): (H+W-1)*C/4 launch+sync pairs per call.
- Corners: the kernels solve top-left only. FInCFlow's layer gives quadrant g corner g (TL, TR,
  BL, BR = our corners 0..3) by flipping that quadrant's image and weight around the call;
  Inverse-Flow's layer flips the whole image for its `order`.
- Inverse-Flow's `inverse` reads output channel c at every tap where it should read input channel
  j, so only C/4 = 1 (C = 4) can come out right. Its `forward(x, weight, out)` is the matching
  convolution (it reads channel j); `dy` and `dw` (gradients) are not measured here.

Checks, float32 peers against float64 references: the peer weight mapped to a block-diagonal HWIO
kernel with a unit diagonal; round trip inverse(forward(x)) = x; the solution against our CPU core
(Core.cpu_solve, per group and corner); our causal_conv of the solution against y. Errors above
1e-3 are marked WRONG and kept. Timings at the Glow, Table 7 and Table 10 shapes through
bench_ops_gpu.time_calls: ours and cuDNN's convolution (CUDA graph), the peers with fewer repeats
and a time budget per shape (their synchronisation rules graphs out: device time is the sum of
their kernels). Writes benchmarks/results/gpu_peers.{md,json}.
"""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import bench_ops_gpu as ops
from benchmarks import write_results

BUILD = os.path.join(ops.ROOT, "build", "peers")
DEVICE = "cuda"
PEERS = {
    "FInCFlow": dict(
        repo="aditya-v-kallappa/FInCFlow", folder="fastflow/utils/fastflow_cuda_inverse",
        sources=("cinc_cuda_level2.cpp", "cinc_cuda_kernel_level2.cu"),
        module="peer_fincflow_level2", layer=("quadrants TL/TR/BL/BR", (0, 1, 2, 3)),
        expected="no known fault (its kernel reads input channel j)"),
    "Inverse-Flow": dict(
        repo="girish-lab/Inverse-Flow", folder="inf/utils/inv_conv_cuda",
        sources=("inv_conv_with_bp_general.cpp", "inv_conv_with_bp_kernel_general.cu"),
        module="peer_inverse_flow_bp", layer=("whole image BR", (3, 3, 3, 3)),
        expected="its inverse reads output channel c at every tap, so only C = 4 can be right"),
}
# (batch, height, width, channels, k): C = 4 (one channel per group), wider groups, odd sizes.
CHECK_SHAPES = [(2, 8, 8, 4, 3), (2, 9, 7, 4, 2), (2, 6, 6, 8, 1), (2, 8, 8, 8, 3),
                (3, 10, 10, 12, 3), (2, 9, 7, 12, 5), (1, 12, 12, 48, 3)]
WRONG = 1e-3
FLIPS = ((), (3,), (2,), (2, 3))  # NCHW axes our corner 0..3 flips
# Header force-included before a peer's sources: their dispatch call passes Tensor::type().
COMPAT_HEADER = r"""#pragma once
#include <torch/extension.h>
inline c10::ScalarType tfinvconv_peer_scalar_type(c10::ScalarType t) { return t; }
inline c10::ScalarType tfinvconv_peer_scalar_type(const at::DeprecatedTypeProperties& t) {
  return t.scalarType();
}
#undef AT_DISPATCH_FLOATING_TYPES
#define AT_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(tfinvconv_peer_scalar_type(TYPE), NAME, \
                     AT_DISPATCH_CASE_FLOATING_TYPES(__VA_ARGS__))
"""


def find_peers(peer_dir):
  """{name: (checkout, sources, commit)} for every peer present; says how to fetch the others."""
  found = {}
  for name, peer in PEERS.items():
    root = os.path.join(peer_dir, name)
    sources = [os.path.join(root, peer["folder"], s) for s in peer["sources"]]
    missing = [path for path in sources if not os.path.isfile(path)]
    if missing:
      print(f"error: {missing[0]} is missing, {name} skipped. Fetch your own checkout: git clone "
            f"https://github.com/{peer['repo']} {root} (it is never committed here)", flush=True)
      continue
    found[name] = (root, sources, peer_commit(root, peer["repo"]))
  if not found:
    sys.exit(f"no peer found under {peer_dir}/ (see `python -m benchmarks.bench_gpu_peers -h`)")
  return found


def peer_commit(root, repo):
  """{"repo", "commit"} from root/COMMIT ("<hash> <owner/name>") or from the git checkout."""
  path = os.path.join(root, "COMMIT")
  if os.path.isfile(path):
    with open(path) as f:
      fields = f.read().split()
    if fields:
      return dict(repo=fields[1] if len(fields) > 1 else repo, commit=fields[0])
  if os.path.exists(os.path.join(root, ".git")):  # else git would answer for an enclosing repo
    try:
      head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
      return dict(repo=repo, commit=head)
    except (OSError, subprocess.CalledProcessError):
      pass
  return dict(repo=repo, commit="unknown (no COMMIT file, not a git checkout)")


def compiler_errors(message, lines=12):
  """The error lines of a failed build (its tail is often warnings from another file)."""
  text = message.strip().splitlines()
  errors = [line for line in text if "error" in line.lower() and "deprecated" not in line]
  return "\n".join((errors or text)[-lines:])


def build_peer(name, sources, as_published):
  from torch.utils.cpp_extension import load  # pylint: disable=import-outside-toplevel
  folder = os.path.join(BUILD, PEERS[name]["module"])
  os.makedirs(folder, exist_ok=True)
  flags = ["-O3"]
  if not as_published:
    header = os.path.join(BUILD, "peer_compat.h")
    flags += ["-include", header]
  start = time.perf_counter()
  try:
    module = load(name=PEERS[name]["module"], sources=sources, build_directory=folder,
                  extra_cflags=flags, extra_cuda_cflags=flags, verbose=False)
    return dict(module=module, build_s=time.perf_counter() - start, error=None)
  except Exception as e:  # pylint: disable=broad-except  (a failed build is a finding)
    return dict(module=None, build_s=time.perf_counter() - start, error=compiler_errors(str(e)))


def build_peers(found, as_published):
  """Builds every found peer at once (two slow nvcc compiles each); {name: build result}."""
  if "TORCH_CUDA_ARCH_LIST" not in os.environ:  # this device only: a quarter of the build time
    major, minor = torch.cuda.get_device_capability()
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
  os.makedirs(BUILD, exist_ok=True)
  with open(os.path.join(BUILD, "peer_compat.h"), "w") as f:
    f.write(COMPAT_HEADER)
  with concurrent.futures.ThreadPoolExecutor(len(found)) as pool:
    futures = {name: pool.submit(build_peer, name, sources, as_published)
               for name, (_, sources, _) in found.items()}
    builds = {name: future.result() for name, future in futures.items()}
  for name, build in builds.items():
    state = "failed, skipped:\n" + build["error"] if build["error"] else "built"
    print(f"{name}: {state} ({build['build_s']:.0f} s)", flush=True)
  return builds


def peer_weight(rng, c, k):
  """A random peer weight (C, C/4, k, k): small taps, strictly lower same-pixel block, and the
  unit diagonal the peers assume (they never read it)."""
  s = c // 4
  weight = rng.normal(scale=0.3 / (k * np.sqrt(s)), size=(c, s, k, k))
  local = np.arange(c) % s
  centre = weight[:, :, k - 1, k - 1]  # a view: writes land in weight
  centre[local[:, None] <= np.arange(s)[None, :]] = 0.0
  centre[np.arange(c), local] = 1.0
  return weight


def ours_from_peer(weight):
  """Peer weight (C, C/4, k, k) -> our HWIO kernel: block diagonal over the 4 groups, unit
  diagonal explicit. Both read tap (p, q) at offset (p-k+1, q-k+1)."""
  c, s, k = weight.shape[0], weight.shape[1], weight.shape[2]
  kernel = np.zeros((k, k, c, c))
  for g in range(4):
    group = slice(g * s, (g + 1) * s)
    kernel[:, :, group, group] = weight[group].transpose(2, 3, 1, 0)  # (o, j, p, q) -> (p, q, j, o)
  kernel[k - 1, k - 1, np.arange(c), np.arange(c)] = 1.0
  return kernel


def flip(t, corner):
  return t.flip(FLIPS[corner]) if FLIPS[corner] else t


def peer_inverse(module, y, weight, corners):
  """The peer's inverse of NCHW y with group g solved from corner g, flipped as their layers do."""
  parts = [flip(part, corner) for part, corner in zip(y.chunk(4, 1), corners)]
  framed = torch.cat(parts, 1).contiguous()
  out = module.inverse(framed, weight, torch.zeros_like(framed))[0]
  return torch.cat([flip(part, corner) for part, corner in zip(out.chunk(4, 1), corners)], 1)


def peer_forward(module, x, weight):
  """The peer's own forward map (top-left): Inverse-Flow's `forward`, FInCFlow's layer conv2d."""
  if hasattr(module, "forward"):
    return module.forward(x, weight, torch.zeros_like(x))[0]
  k = weight.shape[-1]
  return F.conv2d(F.pad(x, (k - 1, 0, k - 1, 0)), weight, groups=4)


def reference(core, y, kernel, corners):
  """Our float64 CPU solve of NHWC y, group by group (the kernel is block diagonal)."""
  s = y.shape[-1] // 4
  parts = []
  for g, corner in enumerate(corners):
    group = slice(g * s, (g + 1) * s)
    parts.append(core.cpu_solve(y[..., group], kernel[:, :, group, group], corner, False))
  return np.concatenate(parts, axis=-1)


def conv_residual(x, kernel, y):
  """Our causal conv (float64, CPU) of a top-left solution against the right-hand side."""
  back = ops.causal_conv(torch.tensor(x, dtype=torch.float64), torch.tensor(kernel))
  return ops.relative_error(back.numpy(), y)


def nchw(a):
  return torch.tensor(a, dtype=torch.float32, device=DEVICE).permute(0, 3, 1, 2).contiguous()


def nhwc(t):
  return t.permute(0, 2, 3, 1).to("cpu", torch.float64).numpy()


def check_shape(core, name, module, rng, shape):
  """Correctness rows of one peer at one (b, h, w, c, k): top-left, then its layer's corners."""
  b, h, w, c, k = shape
  weight_np = peer_weight(rng, c, k)
  kernel = ours_from_peer(weight_np)
  x, y = rng.normal(size=(2, b, h, w, c))
  weight = torch.tensor(weight_np, dtype=torch.float32, device=DEVICE)
  solved = peer_inverse(module, peer_forward(module, nchw(x), weight), weight, (0,) * 4)
  round_trip = ops.relative_error(nhwc(solved), x)
  rows = []
  for label, corners in (("TL", (0,) * 4), PEERS[name]["layer"]):
    got = nhwc(peer_inverse(module, nchw(y), weight, corners))
    row = dict(peer=name, shape=list(shape), corners=label,
               vs_ours=ops.relative_error(got, reference(core, y, kernel, corners)),
               round_trip=round_trip if label == "TL" else None,
               residual=conv_residual(got, kernel, y) if label == "TL" else None)
    errors = [e for e in (row["vs_ours"], row["round_trip"], row["residual"]) if e is not None]
    row["verdict"] = "ok" if all(e <= WRONG for e in errors) else "WRONG"  # NaN is WRONG too
    rows.append(row)
  return rows


def check_peer(core, name, module, shapes):
  rng = np.random.default_rng(0)
  rows = []
  for shape in shapes:
    reason = unsupported(shape[0], shape[3])
    try:
      new = ([dict(peer=name, shape=list(shape), verdict="unsupported: " + reason)] if reason else
             check_shape(core, name, module, rng, shape))
    except RuntimeError as e:  # reported, and the other shapes still run
      new = [dict(peer=name, shape=list(shape), verdict=f"error: {e}".splitlines()[0])]
    for row in new:
      print(check_line(row), flush=True)
    rows += new
  return rows


def unsupported(batch, c):
  """Why a peer cannot take this shape, or None."""
  if c % 4:
    return f"C = {c} is not a multiple of 4 (4 channel groups)"
  if batch > 1024:
    return f"batch {batch} > 1024 (one thread per image in a block)"
  return None


def error_text(e):
  return "-" if e is None else f"{e:.1e}"


def check_line(r):
  b, h, w, c, k = r["shape"]
  return (f"| {r['peer']} | {b}x{h}x{w}x{c}, {k} | {r.get('corners', '-')} | "
          f"{error_text(r.get('round_trip'))} | {error_text(r.get('vs_ours'))} | "
          f"{error_text(r.get('residual'))} | {r['verdict']} |")


def findings(rows, builds, peer_dir):
  """One line per peer: what its source led us to expect and what the checks found."""
  lines = []
  for name in PEERS:
    build = builds.get(name)
    if build is None:
      lines.append(f"- {name}: not found under {peer_dir}/, not run.")
      continue
    if build["error"]:
      lines.append(f"- {name}: did not build:\n\n```\n{build['error']}\n```")
      continue
    mine = [r for r in rows if r["peer"] == name]
    wrong = sorted({r["shape"][3] for r in mine if r["verdict"] == "WRONG"})
    right = sorted({r["shape"][3] for r in mine if r["verdict"] == "ok"} - set(wrong))
    result = (f"WRONG in {sum(r['verdict'] == 'WRONG' for r in mine)} of {len(mine)} checks, at "
              f"C = {wrong}; right at C = {right}" if wrong else
              f"{len(mine)} checks, none above {WRONG:g}")
    failed = sum(r["verdict"].startswith("error") for r in mine)
    if failed:
      result += f"; {failed} of them raised an error (see the table)"
    lines.append(f"- {name}: {result}. From its source: {PEERS[name]['expected']}.")
  return lines


def time_peer(module, y, weight, args):
  """Timing of the peer's top-left inverse on NCHW y, within args.budget_s."""
  reason = unsupported(y.shape[0], y.shape[1])
  if reason:
    return dict(skipped="unsupported: " + reason)
  out = torch.zeros_like(y)  # reused: every call overwrites it before reading (finite values)

  def call():
    return module.inverse(y, weight, out)

  torch.cuda.synchronize()
  start = time.perf_counter()
  call()  # warms up, and sizes the repeats to the budget
  torch.cuda.synchronize()
  once = time.perf_counter() - start
  if once > args.budget_s:
    return dict(skipped=f"one call took {once:.1f} s, over the {args.budget_s:g} s budget")
  # time_calls makes 9 calls beyond the repeats (3 warm-up, 6 for the profiler's kernel sum).
  repeats = max(1, min(args.peer_repeats, int(args.budget_s / once) - 9))
  result = ops.time_calls({"peer": call}, repeats, set())["peer"]
  return dict(result, repeats=repeats, first_call_us=once * 1e6)


def time_shape(core, modules, shape, args):
  """One timing row: ours, cuDNN's causal conv and each built peer on the same operator."""
  batch, size, c, k = shape
  rng = np.random.default_rng(1)
  weight_np = peer_weight(rng, c, k)
  y = torch.tensor(rng.normal(size=(batch, size, size, c)), dtype=torch.float32, device=DEVICE)
  kernel = torch.tensor(ours_from_peer(weight_np), dtype=torch.float32, device=DEVICE)
  row = dict(batch=batch, size=size, channels=c, k=k, peers={})
  try:
    solve, _ = core.solver(y, kernel)
    out = torch.empty_like(y)
    calls = {"ours": lambda: solve(y, out), "conv": ops.conv_calls(y, kernel)["conv"]}
    row.update(ops.time_calls(calls, args.repeats, {"ours", "conv"}))
  except RuntimeError as e:
    row["error"] = str(e).splitlines()[0]
  y_nchw = y.permute(0, 3, 1, 2).contiguous()
  weight = torch.tensor(weight_np, dtype=torch.float32, device=DEVICE)
  for name, module in modules.items():
    try:
      row["peers"][name] = time_peer(module, y_nchw, weight, args)
    except RuntimeError as e:
      row["peers"][name] = dict(skipped=f"error: {e}".splitlines()[0])
  return row


def wrong_channels(rows, name):
  """Channel counts where the peer's answer cannot be trusted: failed there, or failed at some
  C > 4 and this C was not checked."""
  mine = [r for r in rows if r["peer"] == name]
  wrong = {r["shape"][3] for r in mine if r["verdict"] == "WRONG"}
  checked = {r["shape"][3] for r in mine}
  return lambda c: c in wrong or (c not in checked and any(w > 4 for w in wrong))


def us(result, key):
  value = (result or {}).get(key)
  return "-" if value is None else f"{value:.0f}"


def timing_line(row, names, untrusted):
  ours = row.get("ours", {})
  cells = [row["set"], f"{row['batch']}x{row['size']}x{row['size']}x{row['channels']}, "
           f"{row['k']}", us(ours, "device_us"), us(ours, "call_us"),
           us(row.get("conv"), "device_us")]
  for name in names:
    peer = row["peers"].get(name, {})
    if "skipped" in peer:
      cells += [peer["skipped"], "", ""]
      continue
    mark = " (wrong)" if untrusted[name](row["channels"]) else ""
    ratio = (f"{peer['device_us'] / ours['device_us']:.1f}" if ours.get("device_us") and
             peer.get("device_us") is not None else "-")
    cells += [us(peer, "device_us") + mark, us(peer, "call_us"), ratio]
  return "| " + " | ".join(cells) + " |"


def markdown(info, checks, rows, builds, args):
  names = [name for name, build in builds.items() if not build["error"]]
  untrusted = {name: wrong_channels(checks, name) for name in names}
  peers = "; ".join(f"{name} {p['repo']}@{p['commit']}" for name, p in info["peers"].items())
  shim = ("as published" if args.as_published else
          "with our force-included dispatch shim (kernels untouched; see the script's docstring)")
  lines = [f"GPU: {info['device']}; torch {info['torch']} (CUDA {info['cuda']}), cuDNN "
           f"{info['cudnn']}; float32, TF32 off. Peers: {peers}; built {shim}.", "",
           "## Correctness (peer in float32 vs float64 references; WRONG above "
           f"{WRONG:g}, never hidden)", "",
           "round trip = peer inverse of the peer's forward map vs x; vs ours = against our CPU "
           "core on the same block-diagonal operator, per group and corner; residual = our "
           "causal conv of the peer's solution vs y.", "",
           "| peer | B x H x W x C, k | corners | round trip | vs ours | residual | verdict |",
           "|---|---|---|---|---|---|---|"]
  lines += [check_line(r) for r in checks] + [""] + findings(checks, builds, args.peer_dir)
  if rows:
    header = ["set", "B x H x W x C, k", "ours device", "ours call", "cuDNN conv device"]
    for name in names:
      header += [f"{name} device", f"{name} call", f"{name}/ours device"]
    lines += ["", "## Timings (µs per call)", "",
              f"device = CUDA-graph replay (ours, cuDNN; median of {args.repeats}) or the sum of "
              f"the call's GPU kernels from the profiler (peers: they synchronise inside; up to "
              f"{args.peer_repeats} repeats within {args.budget_s:g} s a shape); call = event, "
              "call, event, synchronize. The peers solve 4 independent groups of C/4 channels; "
              "ours and cuDNN run the same block-diagonal operator as a dense C x C kernel. "
              "(wrong) = the peer's answer failed the checks at this C.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [timing_line(row, names, untrusted) for row in rows]
  return "\n".join(lines)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--peer-dir", default="peers", help="holds <name>/ checkouts (git-ignored)")
  parser.add_argument("--check-only", action="store_true", help="correctness only, no timings")
  parser.add_argument("--build-only", action="store_true",
                      help="only build the peers' extensions (no GPU needed; a later run reuses them)")
  parser.add_argument("--repeats", type=int, default=50, help="timing repeats for ours and cuDNN")
  parser.add_argument("--peer-repeats", type=int, default=5, help="at most this many for a peer")
  parser.add_argument("--budget-s", type=float, default=3.0, help="seconds per peer and shape")
  parser.add_argument("--as-published", action="store_true",
                      help="build the peers without our dispatch shim")
  args = parser.parse_args()
  for name in ("repeats", "peer_repeats"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be at least 1")
  return args


def main():
  args = parse_args()
  found = find_peers(args.peer_dir)
  if args.build_only:
    builds = build_peers(found, args.as_published)
    failed = [name for name, b in builds.items() if b["module"] is None]
    sys.exit(f"failed to build: {', '.join(failed)}" if failed else 0)
  if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to PyTorch")
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.benchmark = True
  core = ops.Core()
  start = time.perf_counter()
  builds = build_peers(found, args.as_published)
  modules = {name: b["module"] for name, b in builds.items() if b["module"] is not None}
  info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
              cudnn=torch.backends.cudnn.version(),
              peers={name: commit for name, (_, _, commit) in found.items()})
  print("| peer | B x H x W x C, k | corners | round trip | vs ours | residual | verdict |")
  checks = [row for name, module in modules.items()
            for row in check_peer(core, name, module, CHECK_SHAPES)]
  rows = []
  if not args.check_only and modules:
    for set_name, shapes in ops.SETS:
      for shape in shapes:
        row = dict(time_shape(core, modules, shape, args), set=set_name)
        rows.append(row)
        print(timing_line(row, list(modules), {n: lambda c: False for n in modules}), flush=True)
  text = markdown(info, checks, rows, builds, args)
  print(text)
  info.update(builds={name: dict(build_s=b["build_s"], error=b["error"])
                      for name, b in builds.items()},
              shim=not args.as_published, checks=checks, timings=rows,
              total_s=time.perf_counter() - start)
  write_results("gpu_peers", info, "# Published GPU inverses vs ours and cuDNN "
                "(`python -m benchmarks.bench_gpu_peers`)\n\n" + text)


if __name__ == "__main__":
  main()
