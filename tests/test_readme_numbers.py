"""The documents' figures are the results files' (benchmarks/readme.py generates them)."""

import json
import os
import re

import pytest

from benchmarks import readme
from benchmarks import separation


def _read(path):
  with open(path) as f:
    return f.read()


def test_documents_equal_the_results_files():
  names = []
  for path in readme.DOCUMENTS:
    text = _read(path)
    names += [m.group(2) for m in readme.BLOCK.finditer(text)]
    assert readme.render(text) == text, (
        f"{os.path.relpath(path, readme.ROOT)} differs from benchmarks/results/: run "
        "`.venv/bin/python -m benchmarks.readme`")
  assert sorted(names) == sorted(readme.BLOCKS), names  # every generator is quoted, once


@pytest.mark.parametrize("document, block, old, new", [
    ("README.md", "ops_cpu", "×", "x"),
    ("README.md", "models_cpu", "1.09–1.32×", "1.09–1.33×"),
    ("docs/quality.md", "quality_docs", "inverse_conv 0.9", "inverse_conv 0.4"),
])
def test_a_changed_number_is_caught(document, block, old, new):
  text = _read(os.path.join(readme.ROOT, document))
  start = text.index(f"<!-- results:{block} -->")
  assert old in text[start:], (block, old)
  tampered = text[:start] + text[start:].replace(old, new, 1)
  assert readme.render(tampered) != tampered


def test_an_unknown_block_is_an_error():
  with pytest.raises(ValueError, match="no generator"):
    readme.render("<!-- results:nothing -->\nold\n<!-- /results:nothing -->\n")


def test_results_files_exist():
  for name in ("ops_cpu.json", "ops_gpu.json", "quality.json", "main_job.json",
               "models_cpu.json", "mixed_cpu.json", "ops_cpu_portable.json"):
    assert os.path.exists(os.path.join(readme.RESULTS, name)), name


def test_quality_md_separations_are_the_formula():
  """benchmarks/results/quality.md (written by benchmarks/quality.py) states separations with
  the same formula the documents' generated sentences use."""
  with open(os.path.join(readme.RESULTS, "quality.json")) as f:
    results = json.load(f)["results"]
  text = _read(os.path.join(readme.RESULTS, "quality.md"))
  found = 0
  for dataset in results:
    rows = {r["model"]: r for r in dataset["rows"]}
    section = text[text.index(f"### {dataset['dataset']} "):]
    best = re.search(r"Best: (\S+), ahead of (\S+) by [\d.]+ bits/dim = ([\d.]+) standard", section)
    versus = re.search(r"inverse_conv vs 1x1: .*?\(([+-][\d.]+) standard deviations\)", section)
    assert best and versus, dataset["dataset"]
    assert f"{separation(rows[best[1]], rows[best[2]]):.1f}" == best[3]
    assert f"{separation(rows['inverse_conv'], rows['1x1']):+.1f}" == versus[1]
    found += 2
  assert found == 4
