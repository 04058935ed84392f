"""The CPU kernels compiled per instruction set: the dispatcher picks the widest this CPU has,
every forced path (TFINVCONV_CPU_PATH) gives the widest path's results, nonsense is refused, and
the library runs on CPUs without AVX2 or AVX-512 (under qemu, one CPU model each)."""

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests import reference as ref
from tests.ops import cpu_flags
from tests.ops import cpu_path_probe as probe
from tfinvconv import ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = os.path.join(ROOT, "tests", "ops", "cpu_path_probe.py")
PORTABLE_PATHS = ("baseline", "avx2", "avx512")
# Each test here starts a process (a probe or qemu): `make test` runs them, `make test-quick` not.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def widest():
  """The auto path of this process; the tests need a portable build on x86-64 Linux."""
  if os.environ.get("TFINVCONV_CPU_PATH", "auto") != "auto":
    pytest.skip("TFINVCONV_CPU_PATH is set for the whole test run")
  path = ops.cpu_path()
  if path not in PORTABLE_PATHS:
    pytest.skip(f"a TFINVCONV_MARCH build (its one path is {path!r})")
  if not cpu_flags.cpu_flags():
    pytest.skip("no /proc/cpuinfo to check the dispatcher against")
  return path


def _probe(tmp_path, cpu_path, *qemu):
  env = dict(os.environ, TFINVCONV_CPU_PATH=cpu_path, TF_CPP_MIN_LOG_LEVEL="2")
  out = str(tmp_path / f"{cpu_path}.npz")
  run = subprocess.run([*qemu, sys.executable, PROBE, "results", out], env=env, cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  return np.load(out)


def test_auto_picks_the_widest_path_this_cpu_has(widest):
  assert widest == cpu_flags.paths_this_cpu_runs()[-1]


@pytest.mark.parametrize("forced", PORTABLE_PATHS)
def test_every_path_gives_the_results_of_the_widest(widest, forced, tmp_path):
  if forced not in cpu_flags.paths_this_cpu_runs():
    pytest.skip(f"this CPU cannot run the {forced} path")
  results = _probe(tmp_path, forced)
  assert str(results["path"]) == forced, str(results["error"])
  for case in probe.CASES:
    # Paths differ only in summation order and FMA contraction: rounding, relative to the scale.
    tolerance = 1e-12 if case[0] == "float64" else 2e-6
    mine = probe.solve_with_gradients(*case)
    key = "/".join(map(str, case))
    for name, value in mine.items():
      _assert_close(results[f"{key}/{name}"], value, tolerance,
                    f"{forced} vs {widest}: {name} of {case}")
    # And the solution is right, not just the same: A x = y against the NumPy reference.
    back = ref.causal_conv(results[f"{key}/x"].astype(np.float64), mine["kernel"], case[3])
    _assert_close(back, mine["y"], 10 * tolerance, f"{forced}: A x != y for {case}")


def _assert_close(actual, expected, tolerance, what):
  error = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert error <= tolerance, f"{what}: relative error {error:.2e} > {tolerance:.0e}"


def test_unknown_path_is_refused_with_the_choices(widest, tmp_path):
  results = _probe(tmp_path, "sse9")
  assert str(results["path"]) == ""
  assert ("TFINVCONV_CPU_PATH=sse9 is not a CPU path of this build (it has: baseline, avx2, "
          "avx512)") in str(results["error"])


def test_a_path_this_cpu_lacks_is_refused(widest, tmp_path):
  missing = [p for p in PORTABLE_PATHS if p not in cpu_flags.paths_this_cpu_runs()]
  if not missing:
    pytest.skip("this CPU runs every path")
  results = _probe(tmp_path, missing[-1])
  assert "needs instructions this CPU lacks" in str(results["error"])


# CPU models of qemu-user (TCG emulates AVX2 but no AVX-512): TensorFlow 2.21 needs AVX.
QEMU_CPUS = {"SandyBridge": "baseline", "Haswell": "avx2"}


def test_runs_on_cpus_without_avx2_or_avx512_under_qemu(widest):
  """Each model in its own process, both at once: a TensorFlow import under qemu takes
  one to two minutes of CPU time."""
  qemu = shutil.which("qemu-x86_64")
  if qemu is None:
    pytest.skip("qemu-x86_64 is not installed (apt-get install qemu-user; .ci/run installs it)")

  def run(cpu):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TFINVCONV_CPU_PATH", None)
    return subprocess.run([qemu, "-cpu", cpu, sys.executable, PROBE, "round-trip"], env=env,
                          cwd="/", capture_output=True, text=True, timeout=480)

  with concurrent.futures.ThreadPoolExecutor(len(QEMU_CPUS)) as pool:
    runs = dict(zip(QEMU_CPUS, pool.map(run, QEMU_CPUS)))
  for cpu, expected in QEMU_CPUS.items():
    # A library with instructions the model lacks dies here with SIGILL (return code -4).
    assert runs[cpu].returncode == 0, f"{cpu}: rc {runs[cpu].returncode}\n{runs[cpu].stderr[-2000:]}"
    m = re.search(r"path=(\S*) round_trip_error=(\S+) error=(.*)", runs[cpu].stdout)
    assert m, runs[cpu].stdout
    assert m.group(1) == expected, f"{cpu}: {m.group(0)}"
    assert float(m.group(2)) < 1e-5, f"{cpu}: {m.group(0)}"
