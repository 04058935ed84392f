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
  for name in ("README.md", "Makefile", "setup.py"):
    if "../shared" in open(os.path.join(ROOT, name), encoding="utf-8").read():
      outside.append(name)
  assert not outside, f"references to ../shared: {outside}"
  for linked in re.findall(r"\]\((docs/[^)]+)\)", open(os.path.join(ROOT, "README.md")).read()):
    assert os.path.exists(os.path.join(ROOT, linked)), linked
