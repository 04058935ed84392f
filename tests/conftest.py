import os
import sys

# Tests import the `tests.reference` helpers; make the repo root importable however pytest starts.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# `make test` runs two pytest workers, each taking whole files (--dist loadfile) in collection
# order: the files that start processes for minutes go first, so that none starts last and
# leaves the other worker idle.
LONGEST_FIRST = ("train/test_multihost.py", "train/test_recipes.py", "train/test_distributed.py",
                 "train/test_train.py", "models/test_saving.py")
TESTS = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(items):
  def rank(item):
    path = os.path.relpath(str(item.path), TESTS)
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)
  items.sort(key=rank)  # stable: the order within a file and among the others is kept
