"""The CPU paths of the portable op library this CPU can run, read from /proc/cpuinfo (not from
the dispatcher under test). No TensorFlow: `make test-cpu-paths` runs it as a script,

  python tests/ops/cpu_flags.py --narrower

which prints the paths narrower than the widest (the ones TFINVCONV_CPU_PATH must force),
separated by spaces; without --narrower it prints every path this CPU runs."""

import sys


def cpu_flags():
  """The flags of /proc/cpuinfo; empty where there is none."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


def paths_this_cpu_runs():
  """baseline, then avx2 (AVX2 and FMA), then avx512 (AVX-512F too): narrowest first."""
  flags = cpu_flags()
  paths = ["baseline"]
  if {"avx2", "fma"} <= flags:
    paths.append("avx2")
    if "avx512f" in flags:
      paths.append("avx512")
  return paths


def main(argv):
  if argv not in ([], ["--narrower"]):
    sys.exit("usage: cpu_flags.py [--narrower]")
  paths = paths_this_cpu_runs()
  print(" ".join(paths[:-1] if argv else paths))


if __name__ == "__main__":
  main(sys.argv[1:])
