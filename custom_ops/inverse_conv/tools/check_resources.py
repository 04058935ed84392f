"""Resource gate for the CUDA kernels: compiles the GPU core with `nvcc --resource-usage` for
sm_80 and sm_90 and fails on anything the launch plan does not assume.

- no register spills and no local-memory stack frame (they turn the inner loop into memory
  traffic);
- no static shared memory: the plan (inverse_conv_gpu.h) gives each kernel all of its shared
  memory dynamically and checks that against the device's opt-in limit;
- registers x threads within the 64K-register file for the largest block the plan launches
  (kMaxSolveThreads for the solve, kPrepareThreads for the prepare kernel).

  python check_resources.py [nvcc]
"""

import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SOURCE = os.path.join(ROOT, "custom_ops", "inverse_conv", "core", "inverse_conv_gpu.cu.cc")
PLAN_HEADER = os.path.join(ROOT, "custom_ops", "inverse_conv", "core", "inverse_conv_gpu.h")
ARCHS = (80, 90)
REGISTER_FILE = 65536


def plan_constant(name):
  text = open(PLAN_HEADER).read()
  return int(re.search(rf"constexpr int {name} = (\d+);", text).group(1))


def unrolled_vector_counts():
  text = open(PLAN_HEADER).read()
  counts = re.search(r"using UnrolledVectorCounts = VectorCounts<([\d, ]+)>;", text).group(1)
  return counts.split(",")


def parse(log):
  """{(kernel, sm): {registers, spill_stores, spill_loads, stack, smem}} from ptxas output."""
  kernels, current = {}, None
  for line in log.splitlines():
    m = re.search(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", line)
    if m:
      current = (m.group(1), int(m.group(2)))
      kernels[current] = {"registers": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0,
                          "smem": 0}
      continue
    if current is None:
      continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                  line)
    if m:
      kernels[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                              spill_loads=int(m.group(3)))
    m = re.search(r"Used (\d+) registers", line)
    if m:
      kernels[current]["registers"] = int(m.group(1))
    m = re.search(r"(\d+) bytes smem", line)
    if m:
      kernels[current]["smem"] = int(m.group(1))
  return kernels


def kernel_label(mangled):
  """SolveKernel<float, weights in shared> from the mangled name."""
  m = re.search(r"(SolveKernel|PrepareKernel)I([fd])(?:Lb([01])ELb([01])ELi(\d+)E)?", mangled)
  if not m:
    return mangled[:40]
  label = m.group(1) + "<" + {"f": "float", "d": "double"}[m.group(2)]
  if m.group(3) is not None:
    label += ", weights " + ("shared" if m.group(3) == "1" else "global")
    label += ", tile " + ("shared" if m.group(4) == "1" else "global")
    label += f", {m.group(5)} vectors" if m.group(5) != "0" else ", generic"
  return label + ">"


def problems(kernels, solve_threads, prepare_threads):
  found = []
  for (name, sm), r in sorted(kernels.items()):
    threads = solve_threads if "SolveKernel" in name else prepare_threads
    short = kernel_label(name)
    if r["spill_stores"] or r["spill_loads"]:
      found.append(f"{short} sm_{sm}: {r['spill_stores']} bytes spill stores, "
                   f"{r['spill_loads']} bytes spill loads")
    if r["stack"]:
      found.append(f"{short} sm_{sm}: {r['stack']} bytes stack frame (local memory)")
    if r["smem"]:
      found.append(f"{short} sm_{sm}: {r['smem']} bytes static shared memory (the plan assumes 0)")
    if r["registers"] * threads > REGISTER_FILE:
      found.append(f"{short} sm_{sm}: {r['registers']} registers x {threads} threads exceeds "
                   f"the {REGISTER_FILE}-register file")
  return found


def main(nvcc="nvcc"):
  kernels = {}
  with tempfile.TemporaryDirectory() as scratch:
    for sm in ARCHS:
      out = subprocess.run(
          [nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-c", "-x", "cu",
           "--resource-usage", "-gencode", f"arch=compute_{sm},code=sm_{sm}", "-I", ROOT, SOURCE,
           "-o", os.path.join(scratch, f"sm_{sm}.o")],
          capture_output=True, text=True, check=False)
      if out.returncode:
        print(out.stdout + out.stderr)
        return 1
      kernels.update(parse(out.stdout + out.stderr))
  solve_kernels = [key for key in kernels if "SolveKernel" in key[0]]
  # {float, double} x (3 placements + the unrolled ones): WithPlacement in
  # inverse_conv_gpu_kernel.h.
  expected = 2 * (3 + len(unrolled_vector_counts())) * len(ARCHS)
  if len(solve_kernels) != expected:
    print(f"expected {expected} solve kernels in the resource report, found {len(solve_kernels)}")
    return 1
  for (name, sm), r in sorted(kernels.items()):
    print(f"  sm_{sm} {kernel_label(name):52s} {r['registers']:3d} registers, spills "
          f"{r['spill_stores']}/{r['spill_loads']} B, stack {r['stack']} B, static smem "
          f"{r['smem']} B")
  found = problems(kernels, plan_constant("kMaxSolveThreads"), plan_constant("kPrepareThreads"))
  for p in found:
    print("RESOURCE FAIL", p)
  print("resource gate:", "FAILED" if found else f"passed ({len(kernels)} kernels)")
  return 1 if found else 0


if __name__ == "__main__":
  sys.exit(main(*sys.argv[1:]))
