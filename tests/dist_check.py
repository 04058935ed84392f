"""Checks of what `make sdist` and `make wheel` build and of the wheel installed the ways the
README says (`make wheel-install-check`, part of CI); tests/test_build_files.py runs the fast ones
on an sdist it builds itself.

    python tests/dist_check.py sdist SDIST            # the files the build needs, the metadata
    python tests/dist_check.py wheel WHEEL            # manylinux tag (auditwheel), .so, metadata
    python tests/dist_check.py isolated-build SDIST   # pip's default build stops at once, clearly
    python tests/dist_check.py route ROUTE WHEEL      # README's command for ROUTE into an empty
                                                      # venv, one TensorFlow, tests/wheel_smoke.py

ROUTE is `tensorflow` or `tensorflow-cpu` (README.md, "Installing"). Each command exits non-zero
with the problems listed.
"""

import ast
import email.parser
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUTES = ("tensorflow", "tensorflow-cpu")
# The one TensorFlow distribution each route ends with (pip list).
TENSORFLOW_ROUTE_DISTRIBUTION = {"tensorflow": "tensorflow", "tensorflow-cpu": "tensorflow-cpu"}


# ---------------------------------------------------------------------------------------------
# What the build reads


def _setup_tree():
  with open(os.path.join(ROOT, "setup.py")) as f:
    return ast.parse(f.read())


def compiled_sources():
  """setup.py's *_SOURCES lists: every file g++ or nvcc compiles."""
  sources = []
  for node in _setup_tree().body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "").endswith("_SOURCES"):
      sources += ast.literal_eval(node.value)
  return sources


def _includes(path):
  """The repository files `path` includes with #include "...", directly or through others
  (resolved as the compiler does: next to the including file, then from the root, `-I ROOT`);
  TensorFlow's and the system's headers are not in the repository and are skipped."""
  found, todo = set(), [path]
  while todo:
    current = todo.pop()
    with open(os.path.join(ROOT, current), encoding="utf-8") as f:
      names = re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read(), re.M)
    for name in names:
      for candidate in (os.path.join(os.path.dirname(current), name), name):
        candidate = os.path.normpath(candidate)
        if os.path.exists(os.path.join(ROOT, candidate)):
          if candidate not in found:
            found.add(candidate)
            todo.append(candidate)
          break
  return found


def build_inputs():
  """Every repository file that building a wheel from the sdist reads."""
  needed = {"setup.py", "pyproject.toml", "README.md", "LICENSE",  # README: long_description
            "tools/build_backend.py",  # pyproject.toml's build backend
            # setup.py loads the GPU target list and the glibc stubs' builder
            "custom_ops/inverse_conv/tools/cuda_arch.py",
            "custom_ops/inverse_conv/tools/glibc_compat.py"}
  for source in compiled_sources():
    needed |= {source} | _includes(source)
  for folder, _, names in os.walk(os.path.join(ROOT, "tfinvconv")):
    needed |= {os.path.relpath(os.path.join(folder, n), ROOT) for n in names if n.endswith(".py")}
  return needed


# ---------------------------------------------------------------------------------------------
# Metadata


def metadata_problems(text, where, tf_version=None):
  """Problems with a PKG-INFO / METADATA file; tf_version: the TensorFlow the wheel's op was
  built for, which its one TensorFlow requirement must pin exactly."""
  message = email.parser.Parser().parsestr(text)
  problems = []
  expected = {"License-Expression": "Apache-2.0", "License-File": "LICENSE",
              "Description-Content-Type": "text/markdown"}
  for field, value in expected.items():
    if message.get(field) != value:
      problems.append(f"{where}: {field} is {message.get(field)!r}, not {value!r}")
  for field in ("Summary", "Home-page", "Requires-Python", "Author"):
    if not message.get(field):
      problems.append(f"{where}: no {field}")
  if not message.get_all("Classifier"):
    problems.append(f"{where}: no classifiers")
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    first_line = f.readline().strip()
  if not (message.get_payload() or "").lstrip().startswith(first_line):
    problems.append(f"{where}: the long description is not README.md")
  requirements = message.get_all("Requires-Dist") or []
  tensorflows = [r for r in requirements if re.match(r"(tensorflow|tf-nightly)(-cpu)?\s*[=<>!~]",
                                                    r.split(";")[0].strip())]
  want = re.escape(f"tensorflow=={tf_version}") if tf_version else r"tensorflow==\S+"
  if len(tensorflows) != 1 or not re.fullmatch(want, tensorflows[0].replace(" ", "")):
    problems.append(f"{where}: TensorFlow requirements {tensorflows}, expected exactly "
                    f"[tensorflow=={tf_version or '<the build version>'}]")
  return problems


# ---------------------------------------------------------------------------------------------
# sdist


def sdist_problems(path):
  problems = []
  with tarfile.open(path) as archive:
    members = {m.name.split("/", 1)[1] for m in archive.getmembers()
               if m.isfile() and "/" in m.name}
    top = os.path.commonprefix([m.name for m in archive.getmembers()]).split("/")[0]
    pkg_info = archive.extractfile(f"{top}/PKG-INFO").read().decode()
  missing = sorted(build_inputs() - members)
  if missing:
    problems.append(f"{path} lacks files the build needs (MANIFEST.in): {missing}")
  unwanted = sorted(m for m in members if m.startswith(("tests/", "benchmarks/", "train/"))
                    or m.endswith((".so", ".o", ".tf_version", ".cuda.json", ".pyc")))
  if unwanted:
    problems.append(f"{path} holds what stays in the repository or is built: {unwanted}")
  return problems + metadata_problems(pkg_info, path)


# ---------------------------------------------------------------------------------------------
# Wheel


def _auditwheel(*args):
  binary = os.path.join(os.path.dirname(sys.executable), "auditwheel")
  return subprocess.run([binary, *args], capture_output=True, text=True, check=False)


def wheel_problems(path):
  problems = []
  name = os.path.basename(path)
  tag = re.fullmatch(r"tfinvconv-[^-]+-cp\d+-cp\d+-(manylinux_2_\d+_x86_64)\.whl", name)
  if not tag:
    return [f"{name}: not a manylinux_2_X_x86_64 wheel (make wheel repairs it with auditwheel)"]
  tag = tag.group(1)
  shown = _auditwheel("show", "--json", path)
  if shown.returncode != 0:
    return [f"auditwheel show {name} failed: {shown.stderr[-2000:]}"]
  report = json.loads(shown.stdout)
  # auditwheel judges the wheel by its symbol versions (sym_tag) and by the libraries it needs
  # that a policy does not allow (TensorFlow's own would be one: the op must not name it,
  # setup.py's _without_framework). Its verdict must be the tag the file carries.
  if report["overall_tag"] != tag or report["sym_tag"] != tag:
    problems.append(f"{name}: tagged {tag}, but auditwheel show says {report['overall_tag']} "
                    f"(symbol versions: {report['sym_tag']})")
  if report["external_libs"]:
    problems.append(f"{name}: needs libraries outside the manylinux policy: "
                    f"{sorted(report['external_libs'])}")
  with zipfile.ZipFile(path) as wheel:
    names = wheel.namelist()
    stamp = wheel.read("tfinvconv/ops/_inverse_conv_ops.tf_version").decode().strip()
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    libraries = [n for n in names if n.endswith(".so") or ".so." in n]
    recorded = json.loads(wheel.read(CUDA_STAMP)) if CUDA_STAMP in names else None
  if libraries != ["tfinvconv/ops/_inverse_conv_ops.so"]:
    problems.append(f"{name}: shared libraries {libraries}: only the op's, nothing grafted")
  if any(n.startswith(("tests/", "benchmarks/", "train/")) for n in names):
    problems.append(f"{name}: holds repository-only folders")
  if CUDA_STAMP not in names:  # setup.py's record of the nvcc that built the op, if any
    problems.append(f"{name}: no {CUDA_STAMP}: tfinvconv.ops.build_info() cannot say which CUDA "
                    "built the op")
  else:
    problems += cuda_problems(name, recorded["cuda"])
  return problems + metadata_problems(metadata, name, tf_version=stamp)


def cuda_problems(name, cuda):
  """The wheel serves GPU users too: CUDA kernels for every target cuda_arch.py lists for the nvcc
  that built them (machine code from sm_70, or sm_75 with CUDA 13, to sm_90, and PTX)."""
  if not cuda:
    return [f"{name}: the op has no CUDA kernels (built without nvcc; make wheel sets "
            "TFINVCONV_CUDA=1)"]
  arch = tool("cuda_arch")
  want = arch.targets(int(cuda["nvcc"].split(".")[0]))
  if cuda["targets"] != want:
    return [f"{name}: CUDA targets {cuda['targets']}, expected {want} for nvcc {cuda['nvcc']}"]
  return []


def tool(name):
  """A module of custom_ops/inverse_conv/tools/ (cuda_arch, glibc_compat, check_resources): build
  scripts, not a package."""
  path = os.path.join(ROOT, "custom_ops", "inverse_conv", "tools", name + ".py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


CUDA_STAMP = "tfinvconv/ops/_inverse_conv_ops.cuda.json"


# ---------------------------------------------------------------------------------------------
# pip's default (isolated) build


def isolated_build_problems(sdist):
  """`pip wheel SDIST` without --no-build-isolation: stops before any dependency download, saying
  to install TensorFlow and to build with --no-build-isolation."""
  with tempfile.TemporaryDirectory() as scratch:
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", scratch,
                             os.path.abspath(sdist)], cwd=scratch, capture_output=True,
                            text=True, timeout=600, check=False)
    seconds = time.time() - start
  output = result.stdout + result.stderr
  print(f"isolated build: exit {result.returncode} after {seconds:.1f} s")
  problems = []
  if result.returncode == 0:
    problems.append("pip built the wheel in an isolated environment without TensorFlow")
  for needed in ("tfinvconv: no TensorFlow here", "--no-build-isolation",
                 "pip install tensorflow=="):
    if needed not in output:
      problems.append(f"the isolated build's output does not say {needed!r}")
  if re.search(r"(Collecting|Downloading) (tensorflow|tf[-_]keras)", output):
    problems.append("the isolated build fetched TensorFlow before stopping")
  return [f"{p}\n{output[-3000:]}" for p in problems[:1]] + problems[1:]


# ---------------------------------------------------------------------------------------------
# README's install routes


def _installing_section():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  match = re.search(r"^## Installing.*?(?=^## )", text, re.M | re.S)
  return match.group(0) if match else ""


def readme_route_commands():
  """{route: command line} of README.md's Installing section: the `pip install` lines of its
  ```sh blocks that install a wheel (tensorflow-cpu: the one that names tensorflow-cpu==)."""
  commands = {}
  for block in re.findall(r"^```sh\n(.*?)^```", _installing_section(), re.M | re.S):
    for line in block.splitlines():
      line = line.split(" #")[0].strip()
      if line.startswith("pip install") and ".whl" in line:
        route = "tensorflow-cpu" if "tensorflow-cpu==" in line else "tensorflow"
        if route in commands:
          raise ValueError(f"README.md names two commands for the {route} route")
        commands[route] = line
  return commands


def _pip_installs(command):
  """[(options, requirements)] of each `pip install` in a `... && ...` command line."""
  installs = []
  for part in command.split("&&"):
    words = shlex.split(part)
    if words[:2] != ["pip", "install"]:
      raise ValueError(f"not a pip install: {part.strip()}")
    installs.append(({w for w in words[2:] if w.startswith("-")},
                     [w for w in words[2:] if not w.startswith("-")]))
  return installs


def route_problems(route, command, requires_dist, tf_version):
  """The command of a route against the wheel's requirements (Requires-Dist, no extras).
  tensorflow: the wheel alone, everything resolved by pip. tensorflow-cpu: first tensorflow-cpu
  and every requirement but the two that declare `tensorflow` (tf-keras and the wheel, whose pins
  pull it in), resolved by pip; then those two with --no-deps."""
  requires = [r for r in requires_dist if "extra ==" not in r]
  wheel = re.compile(r"\S*tfinvconv-[^\s/]*\.whl")
  installs = _pip_installs(command)
  if route == "tensorflow":
    if len(installs) != 1 or installs[0][0] or not (
        len(installs[0][1]) == 1 and wheel.fullmatch(installs[0][1][0])):
      return [f"the tensorflow route must be `pip install <the wheel>`, not {command!r}"]
    return []
  keras = [r for r in requires if r.startswith("tf-keras")]
  resolved = {f"tensorflow-cpu=={tf_version}"} | {
      r for r in requires if not r.startswith(("tensorflow==", "tf-keras"))}
  if len(installs) != 2:
    return [f"the tensorflow-cpu route must be two pip installs joined by &&, not {command!r}"]
  (options1, first), (options2, second) = installs
  problems = []
  if options1 or set(first) != resolved:
    problems.append(f"its first pip install must resolve exactly {sorted(resolved)} "
                    f"(the wheel's requirements but TensorFlow and tf-keras), not {first}")
  if options2 != {"--no-deps"} or len(second) != 2 or second[0] not in keras or \
     not wheel.fullmatch(second[1]):
    problems.append(f"its second must be `pip install --no-deps {keras} <the wheel>`, not "
                    f"{options2} {second}")
  return problems


def pip_check_problems(route, output):
  """`pip check` after a route: clean, except on tensorflow-cpu that tf-keras and tfinvconv ask
  for `tensorflow` (tensorflow-cpu is the same TensorFlow under another name)."""
  allowed = re.compile(r"(tf-keras|tfinvconv) \S+ requires tensorflow, which is not installed\.")
  lines = [l for l in output.splitlines() if l.strip() and not l.startswith("No broken")]
  if route == "tensorflow-cpu":
    lines = [l for l in lines if not allowed.fullmatch(l.strip())]
  return [f"pip check: {l}" for l in lines]


def _route_line(command, pip, wheel_path):
  """The README command as run here: `pip` is PIP, the wheel's name the wheel just built, no
  progress bars."""
  line = re.sub(r"\S*tfinvconv-[^\s/]*\.whl", shlex.quote(os.path.abspath(wheel_path)), command)
  line = re.sub(r"(^|&&\s*)pip ", lambda m: f"{m.group(1)}{pip} ", line)
  return line.replace(" install ", " install --progress-bar off ")


def _run_logged(line, cwd, env, log):
  start = time.time()
  result = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)
  seconds = time.time() - start
  os.makedirs(os.path.dirname(log), exist_ok=True)
  with open(log, "w") as f:  # what pip fetched and from where, for a slow or failed run
    f.write(f"$ {line}\n{result.stdout}{result.stderr}")
  return result, seconds


def _downloaded_mb(output):
  """MB pip downloaded from an index (its `Downloading NAME (SIZE)` lines)."""
  scale = {"kB": 1e-3, "MB": 1.0, "GB": 1e3}
  return sum(float(size) * scale[unit] for size, unit in
             re.findall(r"^\s*Downloading \S+ \(([\d.]+) (kB|MB|GB)\)", output, re.M))


def run_route(route, wheel_path):
  """Runs README's command for ROUTE as written, with pip against the indexes, into an empty venv
  outside the checkout, then pip check and pip list (one TensorFlow), then tests/wheel_smoke.py
  from another folder.

  Nothing is cached for a rerun: pip's cache stays empty where the index's responses carry no
  caching headers (this machine's registry proxy strips them), and a folder of pre-fetched
  wheels saved little here: the 591 MB download takes about 10 s of a route's minute, the rest is
  pip unpacking and byte-compiling 2 GB."""
  with zipfile.ZipFile(wheel_path) as wheel:
    metadata = email.parser.Parser().parsestr(wheel.read(next(
        n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    tf_version = wheel.read("tfinvconv/ops/_inverse_conv_ops.tf_version").decode().strip()
  command = readme_route_commands().get(route)
  if command is None:
    return [f"README.md's Installing section has no command for the {route} route"]
  problems = route_problems(route, command, metadata.get_all("Requires-Dist") or [], tf_version)
  if problems:
    return problems
  logs = os.path.join(ROOT, "build", "wheel-install-check")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  scratch = tempfile.mkdtemp(prefix=f"tfinvconv-{route}-")
  try:
    env_dir = os.path.join(scratch, "venv")
    venv.create(env_dir, with_pip=False)  # empty: the route's pip installs everything
    python = os.path.join(env_dir, "bin", "python")
    # This pip, run for the empty venv (--python): the venv holds nothing but what the route
    # installs.
    pip = f"{shlex.quote(sys.executable)} -m pip --python {shlex.quote(python)}"
    print(f"[{route}] {command}", flush=True)
    line = _route_line(command, pip, wheel_path)
    installed, install_seconds = _run_logged(line, scratch, env, f"{logs}/{route}-install.log")
    if installed.returncode != 0:
      return [f"[{route}] the install failed:\n{(installed.stdout + installed.stderr)[-4000:]}"]
    fetched_mb = _downloaded_mb(installed.stdout)
    checked = subprocess.run([sys.executable, "-m", "pip", "--python", python, "check"],
                             capture_output=True, text=True, check=False)
    problems += pip_check_problems(route, checked.stdout)
    listed = subprocess.run([sys.executable, "-m", "pip", "--python", python, "list",
                             "--format=json"], capture_output=True, text=True, check=True)
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    tensorflows = sorted(n for n in names
                         if re.fullmatch(r"(tensorflow|tf-nightly)(-cpu|-gpu)?", n))
    if tensorflows != [TENSORFLOW_ROUTE_DISTRIBUTION[route]]:
      problems.append(f"[{route}] pip list shows TensorFlow distributions {tensorflows}, expected "
                      f"only {TENSORFLOW_ROUTE_DISTRIBUTION[route]}")
    start = time.time()
    smoke = subprocess.run([python, os.path.join(ROOT, "tests", "wheel_smoke.py"), ROOT],
                           cwd=scratch, env=env, capture_output=True, text=True, check=False)
    smoke_seconds = time.time() - start
    print(smoke.stdout, end="")
    if smoke.returncode != 0:
      problems.append(f"[{route}] tests/wheel_smoke.py failed:\n{smoke.stderr[-4000:]}")
    elif f"TensorFlow built with CUDA: {route == 'tensorflow'}" not in smoke.stdout:
      problems.append(f"[{route}] the smoke test ran under the wrong TensorFlow build (the "
                      "tensorflow route must load the op into TensorFlow's CUDA build)")
    print(f"[{route}] install {install_seconds:.0f} s, "
          f"{fetched_mb:.0f} MB downloaded from the index, {len(names)} distributions, venv "
          f"{_folder_bytes(env_dir) / 2**20:.0f} MiB; smoke test {smoke_seconds:.0f} s",
          flush=True)
    return problems
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _folder_bytes(folder):
  total = 0
  for base, _, names in os.walk(folder) if folder else ():
    for name in names:
      path = os.path.join(base, name)
      if not os.path.islink(path):
        total += os.path.getsize(path)
  return total


def main(argv):
  if len(argv) < 3 or argv[1] not in ("sdist", "wheel", "isolated-build", "route"):
    sys.exit(__doc__)
  if argv[1] == "sdist":
    problems = sdist_problems(argv[2])
  elif argv[1] == "wheel":
    problems = wheel_problems(argv[2])
  elif argv[1] == "isolated-build":
    problems = isolated_build_problems(argv[2])
  else:
    if argv[2] not in ROUTES or len(argv) != 4:
      sys.exit(__doc__)
    problems = run_route(argv[2], argv[3])
  for problem in problems:
    print(f"FAIL: {problem}", file=sys.stderr)
  if problems:
    sys.exit(1)
  print(f"{argv[1]} {argv[2]}: ok")


if __name__ == "__main__":
  main(sys.argv)
