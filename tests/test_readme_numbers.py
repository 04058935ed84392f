"""The README's figures are the results files' (benchmarks/readme.py generates them)."""

import os

import pytest

from benchmarks import readme


def test_readme_blocks_equal_the_results_files():
  with open(readme.README) as f:
    text = f.read()
  names = [m.group(2) for m in readme.BLOCK.finditer(text)]
  assert sorted(names) == sorted(readme.BLOCKS), names  # every generator is quoted, once
  assert readme.render(text) == text, (
      "README.md differs from benchmarks/results/: run `.venv/bin/python -m benchmarks.readme`")


def test_a_changed_number_is_caught(tmp_path):
  with open(readme.README) as f:
    text = f.read()
  start = text.index("<!-- results:ops_cpu -->")
  tampered = text[:start] + text[start:].replace("×", "x", 1)
  assert readme.render(tampered) != tampered


def test_an_unknown_block_is_an_error():
  with pytest.raises(ValueError, match="no generator"):
    readme.render("<!-- results:nothing -->\nold\n<!-- /results:nothing -->\n")


def test_results_files_exist():
  for name in ("ops_cpu.json", "ops_gpu.json", "quality.json", "main_job.json"):
    assert os.path.exists(os.path.join(readme.RESULTS, name)), name
