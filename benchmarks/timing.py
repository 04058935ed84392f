"""The one timing loop of the CPU benchmarks: warm-up, then every candidate called in turn, round
after round (this machine is noisy, so side-by-side ratios are what to read), summarised as
median, min and max. Imports no tfinvconv (bench_portable's parent must not register the op)."""

import platform
import resource
import time

import numpy as np
import tensorflow as tf


def timed(fn, *args):
  """Seconds for one call of fn(*args), its results fetched (eager dispatch is asynchronous)."""
  start = time.perf_counter()
  out = fn(*args)
  tf.nest.map_structure(lambda t: t.numpy(), out)  # wait for the result
  return time.perf_counter() - start


def interleaved(calls, repeats, warmup=2):
  """calls: {name: (fn, args)}. Each is called `warmup` times (tracing, oneDNN primitives), then
  all in turn for `repeats` rounds. Returns {name: [seconds, ...]}."""
  for fn, args in calls.values():
    for _ in range(warmup):
      timed(fn, *args)
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, (fn, args) in calls.items():
      times[name].append(timed(fn, *args))
  return times


def summary_ms(seconds):
  """{"median_ms", "min_ms", "max_ms"} of a list of times in seconds."""
  ms = 1e3 * np.asarray(seconds, np.float64)
  return {"median_ms": float(np.median(ms)), "min_ms": float(np.min(ms)),
          "max_ms": float(np.max(ms))}


def cpu_name():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _status_kb(field):
  """A field of /proc/self/status in kB (Linux); None where there is none."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def peak_rss_kb():
  """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: on Linux that keeps
  the parent's high-water mark across fork + exec, so every child would report the parent's."""
  peak = _status_kb("VmHWM")
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if peak is None else peak  # not Linux


def rss_kb():
  """This process's resident set now (VmRSS)."""
  now = _status_kb("VmRSS")
  if now is None:
    raise RuntimeError("no VmRSS in /proc/self/status: the memory measurements need Linux")
  return now


def reset_peak_rss():
  """Starts VmHWM again from the current resident set (Linux: 5 to /proc/self/clear_refs)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
