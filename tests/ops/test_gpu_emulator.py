"""The GPU solve without a GPU: the host emulator runs the CUDA kernel's own programs
(custom_ops/inverse_conv/core/inverse_conv_gpu_kernel.h) and must pass on the real source and
fail on a wrong result from each of eleven broken copies of it (MUTATIONS); the resource gate
and the target list are checked here too."""

import concurrent.futures
import os
import re
import shutil
import subprocess

import pytest

from tests import dist_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORE = os.path.join(ROOT, "custom_ops", "inverse_conv", "core")
KERNEL = os.path.join(CORE, "inverse_conv_gpu_kernel.h")
EMULATOR_SOURCE = os.path.join(ROOT, "custom_ops", "inverse_conv", "emulator", "emulate.cc")
GXX = ["g++", "-std=c++17", "-Wno-psabi", "-Wno-interference-size", "-pthread"]


# Each mutation is one way the kernel source can be wrong; the emulator must catch every one.
MUTATIONS = {
    "removed barrier after the accumulate stretch": (
        "block.run([=](int t) { AccumulateDiagonal<kVectors>(t, a, tc, d, buffer, acc, weights); });\n"
        "      block.barrier();",
        "block.run([=](int t) { AccumulateDiagonal<kVectors>(t, a, tc, d, buffer, acc, weights); });"),
    "removed barrier between diagonals": (
        "block.run([=](int t) { FinishDiagonal<kVectors>(t, a, tc, d, buffer, acc, weights); });\n"
        "      block.barrier();",
        "block.run([=](int t) { FinishDiagonal<kVectors>(t, a, tc, d, buffer, acc, weights); });"),
    "changed tap offset": ("int wt = ((p * k + q) * c", "int wt = ((q * k + p) * c"),
    "tap column off by one": ("const int src = ((r + p) * bw + col + q) * c;",
                              "const int src = ((r + p) * bw + col + q + 1) * c;"),
    "wrong channel count in the unrolled kernels": (
        "return kVectors > 0 ? kVectors * Vec16<T>::kSize", "return kVectors > 0 ? kVectors * 2"),
    "swapped frame strides": ("h * a.frame.row_stride + w * a.frame.col_stride",
                              "h * a.frame.col_stride + w * a.frame.row_stride"),
    "left halo not loaded": ("const bool own = r >= halo && col >= halo;",
                             "const bool own = r >= halo;"),
    "adjoint without the channel swap": (
        "a.adjoint ? a.kernel[(tap * c + o) * c + i] : a.kernel[e]", "a.kernel[e]"),
    "centre inverse column order": ("inverse.load(m * c + o)", "inverse.load(o * c + m)"),
    "first copy block of the prepare kernel skipped": (
        "const int begin = static_cast<int>((block - 1) * kPrepareElementsPerBlock);",
        "const int begin = static_cast<int>(block * kPrepareElementsPerBlock);"),
    "singular kernel not poisoned with NaN": (
        "singular ? static_cast<T>(NAN) : value", "value"),
}
REAL = "the kernel source"  # the keys of the unmutated build's runs in `emulated`: in full,
QUICK = "the kernel source, --quick"  # and with the mutants' --quick sample


def _kernel_source():
  with open(KERNEL) as f:
    return f.read()


def _compile(include_root, source, out, optimisation):
  """g++ -c; None on success, else what g++ said."""
  run = subprocess.run(GXX + [optimisation, "-I", include_root, "-c", source, "-o", out],
                       capture_output=True, text=True, check=False)
  return None if run.returncode == 0 else run.stderr[-3000:]


def _emulate(name, include_root, folder, core, flags):
  """Compiles the emulator against `include_root`'s kernel, links the CPU core (the future
  `core`), runs it: the CompletedProcess, or a string saying which build step failed."""
  objects = os.path.join(folder, "emulate.o")
  failed = _compile(include_root, EMULATOR_SOURCE, objects, "-O1")
  if failed:
    return f"{name}: the emulator did not compile\n{failed}"
  core_object, failed = core.result()
  if failed:
    return f"the CPU core did not compile\n{failed}"
  binary = os.path.join(folder, "emulate")
  link = subprocess.run(GXX + [objects, core_object, "-o", binary], capture_output=True,
                        text=True, check=False)
  if link.returncode != 0:
    return f"{name}: the emulator did not link\n{link.stderr[-3000:]}"
  try:
    return subprocess.run([binary, *flags], capture_output=True, text=True, timeout=300)
  except subprocess.TimeoutExpired:
    return f"{name}: the emulator ran for more than 300 s"


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
  """The emulator built on the kernel source and on each broken copy of it (MUTATIONS), every
  g++ and every run in parallel (one CPU core object, compiled once, linked into each): {REAL or
  mutation name: the emulator's CompletedProcess, or why there is none}. The real source runs
  in full, each copy with --quick. A mutation whose anchor is not in the source once is not
  built (its test says so)."""
  source = _kernel_source()
  folder = tmp_path_factory.mktemp("emulator")
  jobs = {REAL: (ROOT, []), QUICK: (ROOT, ["--quick"])}
  for i, (name, (before, after)) in enumerate(sorted(MUTATIONS.items())):
    if source.count(before) != 1:
      continue
    root = folder / f"mutant{i}"
    shutil.copytree(CORE, root / "custom_ops" / "inverse_conv" / "core")
    (root / "custom_ops" / "inverse_conv" / "core" / "inverse_conv_gpu_kernel.h").write_text(
        source.replace(before, after))
    jobs[name] = (str(root), ["--quick"])
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
    core_object = str(folder / "inverse_conv_cpu.o")
    core = pool.submit(lambda: (core_object, _compile(
        ROOT, os.path.join(CORE, "inverse_conv_cpu.cc"), core_object, "-O2")))
    runs = {}
    for name, (root, flags) in jobs.items():
      out = folder / f"build{len(runs)}"
      out.mkdir()
      runs[name] = pool.submit(_emulate, name, root, str(out), core, flags)
    return {name: run.result() for name, run in runs.items()}


def _ran(emulated, name):
  run = emulated[name]
  assert not isinstance(run, str), run  # no build, or no end
  return run


@pytest.mark.slow
def test_emulator_passes_on_the_kernel_source(emulated):
  run = _ran(emulated, REAL)
  assert run.returncode == 0, run.stdout + run.stderr
  # Both paths, both weight placements and both precisions ran, with no failure.
  for dtype in ("float64", "float32"):
    m = re.search(dtype + r": (\d+) cases \((\d+) whole-image, (\d+) tiled, (\d+) global "
                  r"fallback, (\d+) with weights in shared memory\), (\d+) failures", run.stdout)
    assert m, run.stdout
    cases, whole, tiled, fallback, shared, failures = map(int, m.groups())
    assert cases > 300 and whole > 200 and tiled > 100 and fallback > 50
    assert 0 < shared < cases and failures == 0
  assert "launch plans: " in run.stdout and ", 0 failures" in run.stdout


@pytest.mark.slow
def test_the_mutants_sample_passes_on_the_kernel_source(emulated):
  """The control for the mutation tests: --quick passes on the real source, every path and
  unrolled kernel included, so a mutant's failure is its own."""
  run = _ran(emulated, QUICK)
  assert run.returncode == 0, run.stdout + run.stderr
  assert "GPU emulation passed" in run.stdout and "NOT for" not in run.stdout, run.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_emulator_fails_on_a_broken_kernel(name, emulated):
  before, _ = MUTATIONS[name]
  assert _kernel_source().count(before) == 1, f"mutation anchor for {name!r} not found once"
  run = _ran(emulated, name)
  assert run.returncode == 1, f"the emulator missed: {name}\n{run.stdout}{run.stderr}"
  assert "GPU EMULATION FAILED" in run.stdout
  # Caught by a wrong result (a case or the singular-kernel check), not by coverage alone.
  assert re.search(r"^FAIL ", run.stdout, re.M), run.stdout[-3000:]


def test_resource_gate_flags_what_the_plan_does_not_assume():
  gate = dist_check.tool("check_resources")
  solve = "_ZN9tfinvconv12_GLOBAL__N_111SolveKernelIfLb1ELb1ELi3EEEvNS_3gpu9SolveArgsIT_EE"
  generic = "_ZN9tfinvconv12_GLOBAL__N_111SolveKernelIdLb0ELb1ELi0EEEvNS_3gpu9SolveArgsIT_EE"
  prepare = "_ZN9tfinvconv12_GLOBAL__N_113PrepareKernelIdEEvNS_3gpu11PrepareArgsIT_EE"

  def log(name, sm, stack=0, stores=0, loads=0, registers=40, smem=None):
    text = (f"ptxas info    : Compiling entry function '{name}' for 'sm_{sm}'\n"
            f"ptxas info    : Function properties for {name}\n"
            f"    {stack} bytes stack frame, {stores} bytes spill stores, {loads} bytes spill loads\n"
            f"ptxas info    : Used {registers} registers, used 1 barriers")
    return text + (f", {smem} bytes smem" if smem is not None else "") + "\n"

  clean = gate.parse(log(solve, 90) + log(prepare, 90))
  assert gate.problems(clean, 1024, 256) == []
  assert gate.kernel_label(solve) == "SolveKernel<float, weights shared, tile shared, 3 vectors>"
  assert gate.kernel_label(generic) == "SolveKernel<double, weights global, tile shared, generic>"
  cases = {
      "spill": log(solve, 80, stack=8, stores=8, loads=8),
      "static shared memory": log(solve, 90, smem=1024),
      "register file": log(solve, 90, registers=72),
  }
  for what, text in cases.items():
    found = gate.problems(gate.parse(text), 1024, 256)
    assert found, what
  # 72 registers are fine for the 256-thread prepare kernel.
  assert gate.problems(gate.parse(log(prepare, 90, registers=72)), 1024, 256) == []


def test_cuda_targets_cover_sm70_to_sm90_with_ptx():
  arch = dist_check.tool("cuda_arch")
  cuda12 = " ".join(arch.arch_flags(12))
  cuda13 = " ".join(arch.arch_flags(13))
  for sm in (70, 75, 80, 86, 89, 90):
    assert f"code=sm_{sm}" in cuda12
  assert "sm_70" not in cuda13 and "code=sm_75" in cuda13  # CUDA 13 dropped Volta
  for flags in (cuda12, cuda13):
    assert flags.endswith("arch=compute_90,code=compute_90")  # PTX for newer GPUs
  # The names the build records (tfinvconv.ops.build_info()) are the targets it compiles.
  for major, flags in ((12, cuda12), (13, cuda13)):
    assert arch.targets(major) == re.findall(r"code=(\w+)", flags)
