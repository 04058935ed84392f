"""GPU benchmark of the causal solve against cuDNN, without TensorFlow: `make gpu-bench`.

    python -m benchmarks.bench_ops_gpu [--check-only] [--small|--tiny] [--repeats N] [--only SET]

GPU machines here have PyTorch but no TensorFlow, so the framework-free core is built as a shared
library with a C interface (custom_ops/inverse_conv/gpu_bench/c_api.cu) and driven through ctypes
on PyTorch tensors. First correctness: the GPU solve and adjoint against the CPU core in float64
(every corner, both paths), float32 against the same, and torch's own convolution applied to the
solution (A x = y); each solve runs twice and must agree bit for bit, and where the plan picks an
unrolled kernel the generic one is checked too. Then timings next to cuDNN's causal convolution
of the same shape (every tensor channels_last, TF32 off, cudnn.benchmark on): solve, adjoint,
generic kernel, and cuDNN's convolution, input gradient and filter gradient (our kernel gradient
uses cuDNN's filter gradient as well), in float32, plus solve and convolution in float64.
- Device time (the ratios): CUDA-graph replay of back-to-back calls, so PyTorch's dispatch and
  cuDNN's host work are not counted; the profiler's per-call kernel sum beside it, and the kernel
  names, which show that cuDNN ran no layout conversion.
- Per-call time (a second column): event, call, event, sync; what an eager caller pays.
- Floors: the solve's bytes at the measured copy bandwidth, and its chain of H+W-1 diagonals at
  the measured cost of one barrier + dependent shared-memory round trip; the larger binds.
Writes benchmarks/results/ops_gpu.{md,json}.
"""

import argparse
import ctypes
import functools
import os
import re
import statistics
import sys

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = os.path.join(ROOT, "build", "gpu_bench", "libtfinvconv_core.so")

GLOW = [(64, 32, 12, 3), (64, 16, 24, 3), (64, 8, 48, 3)]  # CIFAR-10 levels, batch 64 per GPU
TABLE7 = [(100, size, 12, 3) for size in (16, 32, 64, 128, 256)]
TABLE10 = [(100, 16, 12, k) for k in (2, 3, 4, 5, 7, 9, 11)]
SETS = (("Glow CIFAR-10", GLOW), ("Table 7", TABLE7), ("Table 10", TABLE10))
# Issue targets in device time: Glow solve vs conv, a training step's three calls vs cuDNN's
# three, solve vs its binding floor; paper shapes solve vs conv.
GLOW_SOLVE_TARGET, GLOW_TRAIN_TARGET, FLOOR_TARGET, PAPER_TARGET = 1.0, 1.2, 3.0, 1.5

# (batch, height, width, channels, k): both plans, odd sizes, C != 4, all k classes.
CHECK_SHAPES = [(2, 9, 7, 1, 1), (2, 9, 7, 3, 2), (3, 12, 10, 5, 3), (1, 16, 16, 12, 3),
                (2, 8, 8, 48, 3), (1, 7, 9, 8, 7), (2, 14, 13, 12, 11), (1, 150, 133, 12, 3),
                (1, 300, 260, 12, 3), (2, 96, 80, 48, 3), (1, 70, 64, 12, 5)]
SMALL_CHECK_SHAPES = [(2, 9, 7, 3, 2), (2, 8, 8, 48, 3), (1, 150, 133, 12, 3)]


class Core:
  """ctypes view of the C interface."""

  def __init__(self, path=LIBRARY):
    if not os.path.exists(path):
      sys.exit(f"{path} is missing: run `make gpu-bench` (it builds it first)")
    lib = ctypes.CDLL(path)
    self.path = os.path.relpath(path, ROOT)
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.tfinvconv_gpu_plan.argtypes = [i32] + [i64] * 5 + [ctypes.POINTER(i64)] * 4 + [
        ctypes.POINTER(i32)] * 3
    lib.tfinvconv_gpu_solve.argtypes = [i32] + [i64] * 5 + [ptr, ptr, i32, i32, ptr, ptr, ptr,
                                                            i32]
    lib.tfinvconv_cpu_solve_f64.argtypes = [i64] * 5 + [ptr, ptr, i32, i32, ptr]
    lib.tfinvconv_barrier_chain.argtypes = [i32, i32, ptr, ptr]
    self.lib = lib

  def plan(self, x, k):
    b, h, w, c = x.shape
    fields = [ctypes.c_int64() for _ in range(4)] + [ctypes.c_int() for _ in range(3)]
    err = self.lib.tfinvconv_gpu_plan(x.element_size(), b, h, w, c, k,
                                      *[ctypes.byref(f) for f in fields])
    if err:
      raise RuntimeError(f"no GPU plan for {tuple(x.shape)} k={k} (error {err})")
    scratch, shared, tile_h, tile_w, threads, in_shared, unrolled = (f.value for f in fields)
    return dict(scratch=scratch, shared=shared, tile=(tile_h, tile_w), threads=threads,
                weights_in_shared=bool(in_shared), tiled=(tile_h, tile_w) != (h, w),
                unrolled=unrolled)

  def solver(self, x, kernel, corner=0, adjoint=False, generic=False):
    """A function out = solve(rhs) with its scratch allocated once (as TF's allocator would).
    generic: the generic channel loops even where the plan has an unrolled kernel."""
    k = kernel.shape[0]
    plan = self.plan(x, k)
    scratch = torch.empty(plan["scratch"], dtype=torch.uint8, device="cuda")  # 256-B aligned
    b, h, w, c = x.shape

    def solve(rhs, out):
      stream = torch.cuda.current_stream().cuda_stream
      err = self.lib.tfinvconv_gpu_solve(rhs.element_size(), b, h, w, c, k, rhs.data_ptr(),
                                         kernel.data_ptr(), corner, int(adjoint), out.data_ptr(),
                                         scratch.data_ptr(), stream, int(generic))
      if err:
        raise RuntimeError(f"CUDA error {err} from the solve")
      return out

    return solve, plan

  def cpu_solve(self, rhs, kernel, corner, adjoint):
    rhs = np.ascontiguousarray(rhs, np.float64)
    kernel = np.ascontiguousarray(kernel, np.float64)
    out = np.empty_like(rhs)
    b, h, w, c = rhs.shape
    self.lib.tfinvconv_cpu_solve_f64(b, h, w, c, kernel.shape[0], rhs.ctypes.data,
                                     kernel.ctypes.data, corner, int(adjoint), out.ctypes.data)
    return out


def random_kernel(rng, k, c):
  kernel = rng.normal(scale=0.3 / (k * np.sqrt(c)), size=(k, k, c, c))
  kernel[k - 1, k - 1] += np.diag(rng.uniform(0.6, 1.4, c) * np.where(np.arange(c) % 2, -1, 1))
  return kernel


def masked_weight(kernel):
  """HWIO kernel -> OIHW conv weight with the same-pixel block masked to input <= output."""
  k, c = kernel.shape[0], kernel.shape[2]
  mask = torch.ones_like(kernel)
  mask[k - 1, k - 1] = torch.triu(torch.ones(c, c, dtype=kernel.dtype, device=kernel.device))
  return (kernel * mask).permute(3, 2, 0, 1).contiguous()


def pad_causal(x_nhwc, k):
  """NHWC -> NCHW view (channels_last) padded k-1 above and to the left."""
  return F.pad(x_nhwc.permute(0, 3, 1, 2), (k - 1, 0, k - 1, 0))


def causal_conv(x_nhwc, kernel):
  """torch's convolution of the top_left causal map, NHWC in and out."""
  y = F.conv2d(pad_causal(x_nhwc, kernel.shape[0]), masked_weight(kernel))
  return y.permute(0, 2, 3, 1)


def relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if not np.all(np.isfinite(a)):
    return float("inf")
  return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))


def check(core, shapes, corners=range(4)):
  """GPU vs CPU core (float64 and float32), and torch conv(solve(y)) = y. Returns failures."""
  rng = np.random.default_rng(0)
  failures, worst = 0, {"float64": 0.0, "float32": 0.0, "conv": 0.0}
  for (b, h, w, c, k) in shapes:
    kernel = random_kernel(rng, k, c)
    rhs = rng.normal(size=(b, h, w, c))
    for corner in corners:
      for adjoint in (False, True):
        expected = core.cpu_solve(rhs, kernel, corner, adjoint)
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-3)):
          x = torch.tensor(rhs, dtype=dtype, device="cuda")
          kt = torch.tensor(kernel, dtype=dtype, device="cuda")
          name = str(dtype).replace("torch.", "")
          for generic in (False, True):  # the plan's kernel, and the generic one if it differs
            solve, plan = core.solver(x, kt, corner, adjoint, generic)
            if generic and not plan["unrolled"]:
              continue
            got = solve(x, torch.full_like(x, float("nan"))).cpu().numpy()
            again = solve(x, torch.full_like(x, float("nan"))).cpu().numpy()
            if not np.array_equal(got, again, equal_nan=True):  # a moving result is a race
              failures += 1
              print(f"FAIL {(b, h, w, c, k)} corner {corner} adjoint {adjoint}: two runs differ")
            err = relative_error(got, expected)
            worst[name] = max(worst[name], err)
            if not err <= tol:
              failures += 1
              print(f"FAIL {name} {(b, h, w, c, k)} corner {corner} adjoint {adjoint} tiled "
                    f"{plan['tiled']} generic {generic}: relative error {err:.2e}")
          if dtype == torch.float64 and corner == 0 and not adjoint:
            back = causal_conv(torch.tensor(got, device="cuda"), kt).cpu().numpy()
            err = relative_error(back, rhs)
            worst["conv"] = max(worst["conv"], err)
            if not err <= 1e-10:
              failures += 1
              print(f"FAIL torch conv(solve(y)) != y for {(b, h, w, c, k)}: {err:.2e}")
  print(f"correctness: {len(shapes)} shapes x {len(corners)} corners x 2 directions x 2 dtypes, "
        f"{failures} "
        f"failures; worst relative error vs CPU core float64 {worst['float64']:.1e}, float32 "
        f"{worst['float32']:.1e}; torch conv of the solution vs rhs {worst['conv']:.1e}")
  return failures


# ---- Timing: what a call costs the device, and what it costs an eager caller.

# Kernels that would mean cuDNN is not running in its native layout (a conversion or copy).
CONVERSION_KERNEL = re.compile(r"(?i)(nchwtonhwc|nhwctonchw|transpose|convert|copy|elementwise|"
                               r"permute|contiguous)")


def event_us(fn):
  """µs between a CUDA event recorded before fn() and one after it, once the second is done."""
  start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
  start.record()
  fn()
  stop.record()
  stop.synchronize()
  return start.elapsed_time(stop) * 1e3


def call_times(calls, repeats):
  """Median µs per call as an eager user pays it: an event recorded on an idle GPU, the call
  (host dispatch included), an event, a synchronisation; interleaved call by call."""
  times = {name: [] for name in calls}
  for r in range(repeats + 3):  # 3 rounds of warm-up
    for name, fn in calls.items():
      us = event_us(fn)
      if r >= 3:
        times[name].append(us)
  return {name: statistics.median(t) for name, t in times.items()}


def graph_time(fn, call_us, budget_us=3000.0, trials=3, replays=5):
  """Device µs per call: n back-to-back calls captured in one CUDA graph and replayed, so no
  host dispatch sits between them (median of `trials`)."""
  n = int(max(1, min(50, budget_us // max(call_us, 1.0))))
  side = torch.cuda.Stream()
  side.wait_stream(torch.cuda.current_stream())
  with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graph asks
    for _ in range(2):
      fn()
  torch.cuda.current_stream().wait_stream(side)
  graph = torch.cuda.CUDAGraph()
  with torch.cuda.graph(graph):
    for _ in range(n):
      fn()
  graph.replay()

  def replay():
    for _ in range(replays):
      graph.replay()

  per_call = [event_us(replay) / (replays * n) for _ in range(trials)]
  del graph
  return statistics.median(per_call)


def kernel_times(fn, calls=5):
  """(µs of GPU work per call, the kernel names of one call): every kernel, memset and copy the
  call launches, timed by the profiler (CUPTI), summed; gaps between them are not counted."""
  from torch.autograd import DeviceType
  from torch.profiler import ProfilerActivity, profile
  fn()
  torch.cuda.synchronize()
  with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(calls):
      fn()
    torch.cuda.synchronize()
  events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
  total = sum(e.time_range.elapsed_us() for e in events) / calls
  names = sorted({e.name for e in events})
  return total, names


def time_calls(calls, repeats, capturable):
  """For each call: call_us (call_times), device_us (graph replay when the name is in
  `capturable`, else the profiler's kernel sum), method, kernel_us and kernels (kernel_times).
  Calls that synchronise inside (the peers) cannot be captured in a graph."""
  per_call = call_times(calls, repeats)
  result = {}
  for name, fn in calls.items():
    kernel_us, kernels = kernel_times(fn)
    row = dict(call_us=per_call[name], kernel_us=kernel_us, kernels=kernels, method="kernels",
               device_us=kernel_us)
    if name in capturable:
      try:
        row.update(device_us=graph_time(fn, per_call[name]), method="graph")
      except RuntimeError as error:  # reported, not hidden: the kernel sum stands in
        row["graph_error"] = str(error).splitlines()[0]
    result[name] = row
  return result


def conv_calls(x, kernel, memory_format=torch.channels_last):
  """cuDNN's causal convolution, its input gradient and its filter gradient for the shape of x
  (NHWC) and kernel (HWIO), every tensor in one memory format (channels_last or
  contiguous_format), so no framework copy runs.
  The gradients call aten's convolution_backward with the real input in that format:
  torch.nn.grad.conv2d_input passes an expanded stand-in whose strides read as NCHW, and cuDNN
  then converts (measured: nchwToNhwc / nhwcToNchw kernels and a copy in every call)."""
  k = kernel.shape[0]
  cl = memory_format
  weight = masked_weight(kernel).contiguous(memory_format=cl)
  x_padded = pad_causal(x, k).contiguous(memory_format=cl)
  g = torch.randn_like(x).permute(0, 3, 1, 2).contiguous(memory_format=cl)

  def backward(mask):
    return torch.ops.aten.convolution_backward(g, x_padded, weight, None, [1, 1], [0, 0], [1, 1],
                                               False, [0, 0], 1, mask)

  return {
      "conv": lambda: F.conv2d(x_padded, weight),
      "conv_bwd_data": lambda: backward([True, False, False])[0],
      "filter_grad": lambda: backward([False, True, False])[1],
  }


# ---- Floors: what no kernel of this shape can beat on this device.

def measure_bandwidth(gib=1.0, copies=10):
  """Device-to-device copy bandwidth, bytes read + written per second."""
  a = torch.empty(int(gib * 2**30) // 4, dtype=torch.float32, device="cuda")
  b = torch.empty_like(a)
  b.copy_(a)

  def copy():
    for _ in range(copies):
      b.copy_(a)

  return 2 * a.numel() * 4 * copies / (event_us(copy) * 1e-6)


def measure_barrier_chain(core, threads, iterations=200_000):
  """µs per barrier + dependent shared-memory round trip, for one block of `threads`."""
  sink = torch.empty(1, device="cuda")
  stream = torch.cuda.current_stream().cuda_stream
  core.lib.tfinvconv_barrier_chain(threads, 1000, sink.data_ptr(), stream)
  errors = []
  us = event_us(lambda: errors.append(
      core.lib.tfinvconv_barrier_chain(threads, iterations, sink.data_ptr(), stream)))
  if errors[0]:
    raise RuntimeError(f"CUDA error {errors[0]} from the barrier-chain kernel")
  return us / iterations


def floors(batch, size, c, k, elem, plan, bandwidth, barrier_us):
  """The solve's two floors in µs: its bytes (rhs read, solution written, weights read) at the
  copy bandwidth, and its dependency chain, 2*size-1 diagonals of one barrier + round trip."""
  nbytes = (2 * batch * size * size * c + k * k * c * c) * elem
  chain_us = (2 * size - 1) * barrier_us[plan["threads"]]
  return dict(bytes_us=nbytes / bandwidth * 1e6, chain_us=chain_us,
              binding="chain" if chain_us >= nbytes / bandwidth * 1e6 else "bytes",
              floor_us=max(chain_us, nbytes / bandwidth * 1e6))


# ---- One row of the table.

def bench_row(core, batch, size, c, k, repeats, bandwidth, barrier_us):
  rng = np.random.default_rng(1)
  calls, plans = {}, {}
  for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
    x = torch.tensor(rng.normal(size=(batch, size, size, c)), dtype=dtype, device="cuda")
    g = torch.tensor(rng.normal(size=(batch, size, size, c)), dtype=dtype, device="cuda")
    kernel = torch.tensor(random_kernel(rng, k, c), dtype=dtype, device="cuda")
    solve, plans[dtype] = core.solver(x, kernel)
    out = torch.empty_like(x)
    calls["solve" + suffix] = functools.partial(solve, x, out)
    for layout, memory_format in LAYOUTS.items():
      calls.update({f"{name}{suffix}@{layout}": fn
                    for name, fn in conv_calls(x, kernel, memory_format).items()
                    if suffix == "" or name == "conv"})
    if suffix == "":
      adjoint, _ = core.solver(x, kernel, adjoint=True)
      generic, _ = core.solver(x, kernel, generic=True)
      calls["adjoint"] = functools.partial(adjoint, g, torch.empty_like(g))
      calls["generic"] = functools.partial(generic, x, torch.empty_like(x))
  times = best_layouts(time_calls(calls, repeats, capturable=set(calls)))
  dev = {name: t["device_us"] for name, t in times.items()}
  plan = plans[torch.float32]
  floor = floors(batch, size, c, k, 4, plan, bandwidth, barrier_us)
  return dict(
      batch=batch, size=size, channels=c, k=k, plan=plan, times=times, floors=floor,
      solve_ratio=dev["solve"] / dev["conv"], adjoint_ratio=dev["adjoint"] / dev["conv"],
      train_ratio=(dev["solve"] + dev["adjoint"] + dev["filter_grad"]) /
      (dev["conv"] + dev["conv_bwd_data"] + dev["filter_grad"]),
      floor_ratio=dev["solve"] / floor["floor_us"],
      call_ratio=times["solve"]["call_us"] / times["conv"]["call_us"],
      f64_ratio=dev["solve_f64"] / dev["conv_f64"])


# cuDNN is timed with every tensor in each of these formats; each call is credited with its
# faster one (cuDNN's best conditions; its own engines may still convert internally).
LAYOUTS = {"nhwc": torch.channels_last, "nchw": torch.contiguous_format}


def best_layouts(times):
  """Adds, for each cuDNN call timed as NAME@LAYOUT, NAME: the faster layout's timing (with
  `layout` set), keeping every layout's own entry."""
  best = {}
  for key, t in times.items():
    if "@" in key:
      name, layout = key.split("@")
      if name not in best or t["device_us"] < best[name]["device_us"]:
        best[name] = dict(t, layout=layout)
  return dict(times, **best)


def conversions(row):
  """{call: layout-conversion or copy kernels it launched} for the cuDNN calls in the layout
  that was credited (cuDNN's own engines may convert inside: it is shown, not hidden)."""
  found = {}
  for call in ("conv", "conv_bwd_data", "filter_grad"):
    names = [n for n in row["times"][call]["kernels"] if CONVERSION_KERNEL.search(n)]
    if names:
      found[f"{call} ({row['times'][call]['layout']})"] = sorted(short_name(n) for n in names)
  return found


def short_name(kernel):
  """A kernel's name without its template arguments and parameters."""
  return re.sub(r"^void ", "", re.split(r"[<(]", kernel)[0])


def target_met(row):
  if row["set"] == "Glow CIFAR-10":
    return (row["solve_ratio"] <= GLOW_SOLVE_TARGET and row["train_ratio"] <= GLOW_TRAIN_TARGET
            and row["floor_ratio"] <= FLOOR_TARGET)
  return row["solve_ratio"] <= PAPER_TARGET


def markdown_row(r):
  t, p, f = r["times"], r["plan"], r["floors"]
  path = (f"tiled {p['tile'][0]}x{p['tile'][1]}" if p["tiled"] else "whole image") + \
      f", {p['threads']} thr" + (f", unrolled {p['unrolled']}" if p["unrolled"] else "")
  dev = {name: f"{v['device_us']:.1f}" for name, v in t.items()}
  return (f"| {r['set']} | {r['batch']}x{r['size']}x{r['size']}x{r['channels']}, {r['k']} | "
          f"{path} | {dev['conv']} | {dev['solve']} | {dev['adjoint']} | {dev['filter_grad']} | "
          f"{dev['generic']} | {f['bytes_us']:.1f} / {f['chain_us']:.1f} ({f['binding']}) | "
          f"**{r['solve_ratio']:.2f}** | {r['train_ratio']:.2f} | {r['floor_ratio']:.1f} | "
          f"{r['f64_ratio']:.2f} | {t['conv']['call_us']:.0f} / {t['solve']['call_us']:.0f} "
          f"({r['call_ratio']:.2f}) | {'met' if target_met(r) else 'MISSED'} |")


def markdown(rows, context):
  lines = [
      f"GPU: {context['device']}; core {context['library']}; torch {torch.__version__}, cuDNN "
      f"{torch.backends.cudnn.version()}; TF32 off, cudnn.benchmark on; cuDNN timed with every "
      "tensor channels_last and with every tensor NCHW, each call credited with its faster "
      "layout. Device time in µs per call: CUDA-graph replay of back-to-back calls (no "
      "host dispatch); the per-call column is what an eager caller pays (event, call, event, "
      f"sync; median of {context['repeats']}), PyTorch's dispatch included.", "",
      f"Floors: bytes = rhs read + solution written at the measured copy bandwidth "
      f"({context['bandwidth'] / 1e12:.2f} TB/s); chain = (H+W-1) diagonals x one barrier + "
      f"dependent shared-memory round trip, measured per block size "
      f"({', '.join(f'{n} thr {us * 1e3:.0f} ns' for n, us in context['barrier_us'].items())}). "
      "floor x = solve / the binding floor.", "",
      f"Targets (device time, float32): Glow solve <= {GLOW_SOLVE_TARGET}x conv, train = "
      f"(solve + adjoint + filter grad) / (conv + conv input grad + filter grad) <= "
      f"{GLOW_TRAIN_TARGET}x, within {FLOOR_TARGET}x of the binding floor; paper shapes solve "
      f"<= {PAPER_TARGET}x conv. generic = the solve with the generic channel loops. f64 = "
      "solve / conv in float64 device time, for the record.", "",
      "| set | B x H x W x C, k | path | conv | solve | adjoint | filter grad | generic | "
      "floors bytes / chain | solve/conv | train | floor x | f64 solve/conv | per call conv / "
      "solve (ratio) | target |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  lines += [markdown_row(r) for r in rows]
  converted = sorted({f"{call}: {', '.join(names)}" for r in rows
                      for call, names in conversions(r).items()})
  lines += ["", "Kernels per call at the Glow shapes (profiler; their summed durations, a cross-check "
            "of the graph-replay time, which also counts the gaps between them): " + "; ".join(
      f"{r['size']}²x{r['channels']} {call} {r['times'][call]['kernel_us']:.1f} µs: "
      f"{', '.join(short_name(n) for n in r['times'][call]['kernels'])}"
      for r in rows if r["set"] == "Glow CIFAR-10"
      for call in ("solve", "conv", "conv_bwd_data", "filter_grad")),
            "", "cuDNN's faster layout per call (nhwc = channels_last, nchw = contiguous): " +
            "; ".join(f"{r['size']}²x{r['channels']} k={r['k']} " + ", ".join(
                f"{call} {r['times'][call]['layout']}"
                for call in ("conv", "conv_bwd_data", "filter_grad")) for r in rows),
            "", ("Layout conversion or copy kernels inside the credited cuDNN calls: " +
                 ("; ".join(converted) if converted else "none"))]
  fallbacks = [f"{r['size']}² {n}: {t['graph_error']}" for r in rows
               for n, t in r["times"].items() if "graph_error" in t]
  if fallbacks:
    lines += ["", "Not capturable in a graph (profiler kernel sum used): " + "; ".join(fallbacks)]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check-only", action="store_true", help="correctness only, no timings")
  parser.add_argument("--small", action="store_true", help="a few small correctness shapes")
  parser.add_argument("--tiny", action="store_true",
                      help="two small whole-image shapes (for racecheck, which is slow)")
  parser.add_argument("--repeats", type=int, default=30, help="per-call timings per call")
  parser.add_argument("--only", help="only the sets whose name starts with this (e.g. Glow)")
  parser.add_argument("--library", default=LIBRARY,
                      help="the core library to measure (e.g. an earlier build, side by side)")
  parser.add_argument("--no-check", action="store_true",
                      help="timings only (e.g. for an earlier build measured beside this one)")
  parser.add_argument("--results", default="ops_gpu",
                      help="results name: benchmarks/results/NAME.{md,json}")
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error(f"--repeats must be at least 1, got {args.repeats}")
  if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to PyTorch")
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.benchmark = True
  core = Core(args.library)
  shapes = (SMALL_CHECK_SHAPES[:2] if args.tiny else SMALL_CHECK_SHAPES if args.small else
            CHECK_SHAPES)
  # racecheck takes seconds per launch: --tiny checks two opposite corners only
  corners = (0, 3) if args.tiny else range(4)
  failures = 0 if args.no_check else check(core, shapes, corners)
  if failures or args.check_only or args.tiny or args.small:
    sys.exit(1 if failures else 0)
  rows = bench_all(core, args.repeats, args.only, args.results)
  missed = [f"{r['set']} {r['size']}²x{r['channels']} k={r['k']}" for r in rows
            if not target_met(r)]
  if missed:
    print(f"targets missed ({len(missed)}): {'; '.join(missed)}")


def bench_all(core, repeats, only=None, results="ops_gpu"):
  """Floors, then every shape's row, printed as it comes; writes benchmarks/results/NAME."""
  sets = [(name, shape) for name, shapes in SETS for shape in shapes
          if only is None or name.startswith(only)]
  threads = sorted({core.plan(torch.empty(b, s, s, c, device="meta"), k)["threads"]
                    for _, (b, s, c, k) in sets})
  context = dict(device=torch.cuda.get_device_name(), repeats=repeats, library=core.path,
                 bandwidth=measure_bandwidth(),
                 barrier_us={n: measure_barrier_chain(core, n) for n in threads})
  print(markdown([], context), flush=True)
  rows = []
  for name, shape in sets:
    row = bench_row(core, *shape, repeats, context["bandwidth"], context["barrier_us"])
    row["set"] = name
    rows.append(row)
    print(markdown_row(row), flush=True)
  text = markdown(rows, context)
  print("\n".join(text.splitlines()[len(markdown([], context).splitlines()):]))
  write_results(results, dict(context, rows=rows),
                "# Causal solve on the GPU vs cuDNN in device time (measured by "
                "`make gpu-bench`)\n\n" + text)
  return rows

if __name__ == "__main__":
  main()
