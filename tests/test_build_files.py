"""The build's own files: BUILD (for Bazel users) and setup.py compile the same sources (there is
no Bazel here); the wheel's pins are the tested versions; the sdist holds every file a wheel build
reads and complete metadata; pip's isolated build stops at once; README's install routes end with
one TensorFlow. The end-to-end checks (the wheel built from the sdist, auditwheel, each route
installed into an empty venv) are `make wheel-install-check`'s (tests/dist_check.py)."""

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from tests import dist_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_sources():
  tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
  sources = set()
  for node in tree.body:
    if isinstance(node, ast.Assign) and node.targets[0].id.endswith("_SOURCES"):
      sources |= set(ast.literal_eval(node.value))
  return sources


def _build_sources():
  text = open(os.path.join(ROOT, "BUILD")).read()
  return set(re.findall(r'"(custom_ops/[^"]+\.(?:cc|cu\.cc))"', text))


def test_build_and_setup_name_the_same_sources():
  setup_sources = _setup_sources()
  assert setup_sources, "no *_SOURCES lists found in setup.py"
  assert setup_sources == _build_sources()
  for source in setup_sources:
    assert os.path.exists(os.path.join(ROOT, source)), source


def test_every_source_on_disk_is_built():
  on_disk = set()
  for folder in ("custom_ops/inverse_conv/core", "custom_ops/inverse_conv/tf"):
    for name in os.listdir(os.path.join(ROOT, folder)):
      if name.endswith(".cc"):
        on_disk.add(f"{folder}/{name}")
  assert on_disk == _setup_sources()


def test_docs_live_in_the_repository():
  """Code and docs point into docs/, never to files outside the repository (../shared)."""
  outside = []
  for folder in ("tfinvconv", "custom_ops", "benchmarks", "docs"):
    for base, _, names in os.walk(os.path.join(ROOT, folder)):
      for name in names:
        if name.endswith((".py", ".h", ".cc", ".cu", ".md")):
          path = os.path.join(base, name)
          if "../shared" in open(path, encoding="utf-8").read():
            outside.append(os.path.relpath(path, ROOT))
  for name in ("README.md", "Makefile", "setup.py", "requirements.txt"):
    if "../shared" in open(os.path.join(ROOT, name), encoding="utf-8").read():
      outside.append(name)
  assert not outside, f"references to ../shared: {outside}"
  for linked in re.findall(r"\]\((docs/[^)]+)\)", open(os.path.join(ROOT, "README.md")).read()):
    assert os.path.exists(os.path.join(ROOT, linked)), linked


def _setup_constant(name):
  tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
  for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
      return node.value
  raise AssertionError(f"setup.py has no {name}")


def _pins(lines):
  """{name: version} of `name==version` requirement strings."""
  pins = {}
  for line in lines:
    m = re.match(r"\s*([A-Za-z0-9_.-]+)==([0-9][^\s;#]*)", line)
    if m:
      pins[m.group(1).lower().replace("_", "-")] = m.group(2)
  return pins


def test_wheel_pins_agree_with_requirements_and_makefile():
  """The wheel's dependencies are the versions the repository is tested with."""
  tf_version = ast.literal_eval(_setup_constant("TF_VERSION"))
  declared = [ast.literal_eval(e) if not isinstance(e, ast.JoinedStr) else
              "".join(v.value if isinstance(v, ast.Constant) else tf_version for v in e.values)
              for e in _setup_constant("INSTALL_REQUIRES").elts]
  extras = ast.literal_eval(_setup_constant("EXTRAS_REQUIRE"))
  setup_pins = _pins(declared + [r for reqs in extras.values() for r in reqs])
  tested = _pins(open(os.path.join(ROOT, "requirements.txt")).read().splitlines())
  makefile = open(os.path.join(ROOT, "Makefile")).read()
  tested["tf-keras"] = re.search(r"tf-keras==(\S+)", makefile).group(1)
  tested["horovod"] = re.search(r"HOROVOD_VERSION := (\S+)", makefile).group(1)
  assert tested["tensorflow-cpu"] == tf_version
  # The wheel names `tensorflow` where the tests run `tensorflow-cpu`: the same TensorFlow under
  # the name tf-keras declares too (setup.py's docstring says why).
  tested["tensorflow"] = tested["tensorflow-cpu"]
  assert {"tensorflow", "tensorflow-probability", "tf-keras", "tensorflow-datasets",
          "horovod"} <= set(setup_pins)
  for name, version in setup_pins.items():
    assert tested.get(name) == version, f"setup.py pins {name}=={version}, tested: {tested.get(name)}"
  tensorflows = [r for r in declared if re.match(r"(tensorflow|tf-nightly)(-cpu)?\b(?!-)", r)]
  assert tensorflows == [f"tensorflow=={tf_version}"], (
      f"the wheel requires exactly one TensorFlow, the one its op is built for: {tensorflows}")


# ---------------------------------------------------------------------------------------------
# sdist, metadata, licence, pip's isolated build, README's install routes


def _backend(hook, *args, hide_tensorflow=False):
  """Calls a hook of tools/build_backend.py in a fresh interpreter in the repository root, as a
  build frontend does; hide_tensorflow: as in pip's isolated build environment."""
  code = ("import sys; sys.path.insert(0, 'tools')\n"
          + ("sys.modules['tensorflow'] = None  # find_spec: None, as where it is not installed\n"
             if hide_tensorflow else "")
          + f"import build_backend; print(build_backend.{hook}(*sys.argv[1:]))")
  return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False)


def _build_sdist(source, folder):
  result = subprocess.run(
      [sys.executable, "-c", "import sys; sys.path.insert(0, 'tools'); import build_backend; "
       "print(build_backend.build_sdist(sys.argv[1]))", str(folder)],
      cwd=source, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return os.path.join(folder, result.stdout.split()[-1])


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
  """The sdist as `make sdist` builds it (setuptools through tools/build_backend.py)."""
  return _build_sdist(ROOT, tmp_path_factory.mktemp("sdist"))


def test_the_include_scan_finds_the_headers():
  """dist_check's list of what the build reads follows #include: every header of the core."""
  headers = {f"custom_ops/inverse_conv/core/{n}" for n in
             os.listdir(os.path.join(ROOT, "custom_ops/inverse_conv/core")) if n.endswith(".h")}
  assert headers and headers <= dist_check.build_inputs()


@pytest.mark.slow  # builds the sdist
def test_sdist_holds_every_file_the_build_reads_and_complete_metadata(sdist):
  assert dist_check.sdist_problems(sdist) == []


@pytest.mark.slow  # builds two sdists
def test_an_sdist_without_a_header_fails(sdist, tmp_path):
  """The check above can fail: the same sources with MANIFEST.in's header line removed."""
  with tarfile.open(sdist) as archive:
    archive.extractall(tmp_path, filter="data")
  source = next(p for p in tmp_path.iterdir() if p.is_dir())
  manifest = source / "MANIFEST.in"
  lines = manifest.read_text().splitlines(keepends=True)
  kept = [l for l in lines if "core/*.h" not in l]
  assert len(kept) == len(lines) - 1, "MANIFEST.in names the core's headers on one line"
  manifest.write_text("".join(kept))
  # Built from a tree, not as an sdist of an sdist (whose SOURCES.txt would list the headers).
  (source / "PKG-INFO").unlink()
  for info in source.glob("*.egg-info"):
    for f in info.iterdir():
      f.unlink()
    info.rmdir()
  broken = _build_sdist(source, tmp_path / "out")
  problems = " ".join(dist_check.sdist_problems(broken))
  assert "lacks files the build needs" in problems and "inverse_conv.h" in problems, problems


def test_metadata_problems_are_found():
  text = "Metadata-Version: 2.4\nName: tfinvconv\nRequires-Dist: tensorflow-cpu==2.21.0\n\nx"
  problems = " ".join(dist_check.metadata_problems(text, "m"))
  for field in ("License-Expression", "Description-Content-Type", "Home-page", "Requires-Python",
                "classifiers", "README", "TensorFlow requirements"):
    assert field in problems, field


def test_licence_is_the_apache_2_text():
  with open(os.path.join(ROOT, "LICENSE"), "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  # sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt (Debian's common-licenses copy).
  assert digest == "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


@pytest.mark.slow  # four fresh interpreters
def test_isolated_build_stops_at_once_and_says_what_to_do():
  """pip's isolated build environment has no TensorFlow: the backend's first hook stops there,
  before pip resolves any dependency, with the commands to use instead."""
  tf_version = ast.literal_eval(_setup_constant("TF_VERSION"))
  for hook in ("get_requires_for_build_wheel", "get_requires_for_build_editable"):
    result = _backend(hook, hide_tensorflow=True)
    assert result.returncode != 0, hook
    for needed in ("--no-build-isolation", f"pip install tensorflow=={tf_version}",
                   "tfinvconv-0.1.0.tar.gz", 'README.md, "Installing"'):
      assert needed in result.stderr, (hook, needed, result.stderr)
  # An sdist needs no TensorFlow, and with TensorFlow the wheel hook goes on to setuptools.
  assert _backend("get_requires_for_build_sdist", hide_tensorflow=True).returncode == 0
  assert _backend("get_requires_for_build_wheel").returncode == 0


def _requires_dist(sdist):
  with tarfile.open(sdist) as archive:
    member = next(m for m in archive.getnames() if m.count("/") == 1 and m.endswith("/PKG-INFO"))
    text = archive.extractfile(member).read().decode()
  return re.findall(r"^Requires-Dist: (.*)$", text, re.M)


@pytest.mark.slow  # builds the sdist
def test_readme_install_routes_end_with_one_tensorflow(sdist):
  """README's two commands against the wheel's requirements: the tensorflow-cpu one resolves all
  but the two requirements that declare `tensorflow` and installs those with --no-deps. The
  route's run is make wheel-install-check's."""
  tf_version = ast.literal_eval(_setup_constant("TF_VERSION"))
  requires = _requires_dist(sdist)
  commands = dist_check.readme_route_commands()
  assert set(commands) == set(dist_check.ROUTES), commands
  for route, command in commands.items():
    assert dist_check.route_problems(route, command, requires, tf_version) == [], route
  # The naive command, which installs `tensorflow` next to `tensorflow-cpu`, is refused, and so
  # is one that leaves out a requirement.
  wheel = "build/dist/tfinvconv-0.1.0-cp311-cp311-manylinux_2_24_x86_64.whl"
  naive = f"pip install tensorflow-cpu=={tf_version} {wheel}"
  assert dist_check.route_problems("tensorflow-cpu", naive, requires, tf_version)
  short = commands["tensorflow-cpu"].replace(" scipy", "")
  assert dist_check.route_problems("tensorflow-cpu", short, requires, tf_version)


def test_pip_check_allows_only_tensorflow_cpu_standing_in_for_tensorflow():
  output = ("tf-keras 2.21.0 requires tensorflow, which is not installed.\n"
            "tfinvconv 0.1.0 requires tensorflow, which is not installed.\n")
  assert dist_check.pip_check_problems("tensorflow-cpu", output) == []
  assert len(dist_check.pip_check_problems("tensorflow", output)) == 2
  other = "tfinvconv 0.1.0 requires scipy, which is not installed.\n"
  assert dist_check.pip_check_problems("tensorflow-cpu", other)
  assert dist_check.pip_check_problems("tensorflow", "No broken requirements found.\n") == []


def _needed_libraries(library):
  dynamic = subprocess.run(["readelf", "-d", library], capture_output=True, text=True, check=True)
  return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic.stdout)


@pytest.mark.slow  # readelf, and TensorFlow imported in a fresh process
def test_op_library_names_no_tensorflow_library_and_loads():
  """The op takes TensorFlow's symbols from the process that loads it: a DT_NEEDED entry for
  libtensorflow_framework.so.2 is what would make the wheel fail `auditwheel show` (no manylinux
  policy lists it). The library must still load and run through tf.load_op_library."""
  library = os.path.join(ROOT, "tfinvconv", "ops", "_inverse_conv_ops.so")
  needed = _needed_libraries(library)
  assert "libstdc++.so.6" in needed, needed  # readelf read the right section
  assert not [n for n in needed if "tensorflow" in n], needed
  loaded = subprocess.run(
      [sys.executable, "-c", "import tensorflow as tf; "
       f"print(tf.load_op_library({library!r}).tf_inv_conv_cpu_path().numpy().decode())"],
      capture_output=True, text=True, check=False)
  assert loaded.returncode == 0 and loaded.stdout.strip(), loaded.stderr[-2000:]


def _cpu_only_build(tmp_path, cuda_stamp, **env):
  """setup.py build_ext into tmp_path, over a library whose stamp says `cuda_stamp`, with a g++
  on the PATH that only reports it was reached (the refusal comes before any compile)."""
  ops = tmp_path / "lib" / "tfinvconv" / "ops"
  ops.mkdir(parents=True)
  (ops / "_inverse_conv_ops.cuda.json").write_text(json.dumps({"cuda": cuda_stamp}))
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "g++").write_text("#!/bin/sh\necho 'fake g++ reached' >&2\nexit 3\n")
  (fake / "g++").chmod(0o755)
  environment = {k: v for k, v in os.environ.items() if k != "TFINVCONV_CUDA"}
  environment.update(PATH=f"{fake}:{os.environ['PATH']}", **env)
  return subprocess.run(
      [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
       "--build-temp", str(tmp_path / "tmp")],
      cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_a_cpu_only_build_does_not_replace_cuda_kernels_unasked(tmp_path):
  # tensorflow-cpu here: the default (auto) build has no CUDA kernels.
  cuda = {"nvcc": "12.8", "targets": ["sm_90"]}
  refused = _cpu_only_build(tmp_path / "a", cuda)
  assert refused.returncode != 0
  assert "built with CUDA kernels" in refused.stderr and "TFINVCONV_CUDA=0" in refused.stderr
  assert "fake g++ reached" not in refused.stderr
  # Asked for (TFINVCONV_CUDA=0), or over a CPU-only library, the build goes on to compile.
  for build in (_cpu_only_build(tmp_path / "b", cuda, TFINVCONV_CUDA="0"),
                _cpu_only_build(tmp_path / "c", None)):
    assert "fake g++ reached" in build.stderr, build.stderr[-2000:]


def test_make_setup_refuses_a_venv_that_holds_the_cuda_tensorflow(tmp_path):
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  purelib = subprocess.run(
      [str(venv / "bin" / "python"), "-c",
       "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True, capture_output=True, text=True).stdout.strip()
  info = os.path.join(purelib, "tensorflow-2.21.0.dist-info")
  os.makedirs(info)
  with open(os.path.join(info, "METADATA"), "w") as f:
    f.write("Metadata-Version: 2.1\nName: tensorflow\nVersion: 2.21.0\n")
  result = subprocess.run(["make", "-C", ROOT, f"VENV={venv}", "setup"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "holds tensorflow (the CUDA build)" in result.stderr
  assert not (venv / ".requirements-installed").exists()


def test_cuda_kernels_asked_for_without_nvcc_is_a_clear_error(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "g++").write_text("#!/bin/sh\necho 'fake g++ reached' >&2\nexit 3\n")
  (fake / "g++").chmod(0o755)
  path = [str(fake)] + [d for d in os.environ["PATH"].split(os.pathsep)
                        if not os.path.exists(os.path.join(d, "nvcc"))]
  result = subprocess.run(
      [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
       "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, capture_output=True, text=True,
      env=dict(os.environ, PATH=os.pathsep.join(path), TFINVCONV_CUDA="1"), timeout=300)
  assert result.returncode != 0
  assert "TFINVCONV_CUDA=1" in result.stderr and "no nvcc on the PATH" in result.stderr
  assert "Traceback" not in result.stderr and "fake g++ reached" not in result.stderr


USES_NEW_GLIBC = r"""
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
void* opened(void) { return dlopen("libm.so.6", RTLD_NOW); }
int spun(void) { pthread_spinlock_t s; return pthread_spin_init(&s, 0) || pthread_spin_destroy(&s); }
int posted(void) { sem_t s; sem_init(&s, 0, 0); sem_post(&s); return sem_wait(&s); }
"""


def test_glibc_stubs_keep_the_static_cuda_runtime_loadable_on_older_glibc(tmp_path):
  """What the static CUDA runtime calls (dl*, pthread_*, sem_*), linked on glibc >= 2.34, asks for
  GLIBC_2.34; relinked with glibc_compat's stubs it asks for their pre-2.34 versions (what
  auditwheel's manylinux tag and old glibc go by) and still binds every symbol here."""
  compat = dist_check.tool("glibc_compat")
  source, library = tmp_path / "uses.c", str(tmp_path / "libuses.so")
  source.write_text(USES_NEW_GLIBC)
  link = lambda *extra: subprocess.run(["gcc", "-shared", "-fPIC", str(source), "-o", library,
                                        *extra, "-ldl", "-lpthread"], check=True)
  link()
  if not compat.needs_new_glibc(library):
    pytest.skip("this glibc is older than 2.34: nothing asks for GLIBC_2.34")
  assert {"dlopen", "pthread_spin_init", "sem_post"} <= set(compat.needs_new_glibc(library))
  link(*compat.link_flags(compat.write_stubs(library, str(tmp_path))))
  assert compat.needs_new_glibc(library) == []
  loads = subprocess.run(
      [sys.executable, "-c", "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
       "lib.opened.restype = ctypes.c_void_p; "
       "assert lib.opened() and lib.spun() == 0 and lib.posted() == 0", library],
      env=dict(os.environ, LD_BIND_NOW="1"), capture_output=True, text=True)
  assert loads.returncode == 0, loads.stderr

