"""BUILD (for Bazel users) and setup.py must compile the same sources; there is no Bazel here."""

import ast
import os
import re

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
  for folder in ("tfinvconv", "train", "custom_ops", "benchmarks", "docs"):
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
  assert {"tensorflow-probability", "tf-keras", "tensorflow-datasets", "horovod"} <= set(setup_pins)
  for name, version in setup_pins.items():
    assert tested.get(name) == version, f"setup.py pins {name}=={version}, tested: {tested.get(name)}"
  assert not any(re.match(r"tensorflow(-cpu)?\b(?!-)", r) for r in declared), (
      "TensorFlow itself is not declared (setup.py's docstring says why)")
