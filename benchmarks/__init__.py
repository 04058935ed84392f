"""Benchmarks; every table lands in benchmarks/results/ as NAME.md plus NAME.json."""

import json
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_results(name, data, markdown, folder=RESULTS):
  """Writes folder/NAME.json (the numbers) and folder/NAME.md (the table people read)."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, name + ".json"), "w") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(folder, name + ".md"), "w") as f:
    f.write(markdown + "\n")
