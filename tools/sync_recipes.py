"""Copies examples/distributed/*.py into docs/multi_gpu.md's recipe blocks (run after editing a
recipe; tests/train/test_recipes.py checks that they agree)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sync():
  path = os.path.join(ROOT, "docs", "multi_gpu.md")
  with open(path) as f:
    docs = f.read()

  def current(match):
    with open(os.path.join(ROOT, "examples", "distributed", match.group(1))) as f:
      return f"<!-- recipe:{match.group(1)} -->\n```python\n{f.read()}```\n"

  docs = re.sub(r"<!-- recipe:(\S+) -->\n```python\n.*?```\n", current, docs, flags=re.S)
  with open(path, "w") as f:
    f.write(docs)


if __name__ == "__main__":
  sync()
