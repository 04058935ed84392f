"""Every way users distribute Glow trains one model. The recipes are the files docs/multi_gpu.md
shows (examples/distributed/), run as users run them: Horovod's Keras recipe and its custom loop
under horovodrun with two Gloo ranks, MirroredStrategy over two logical CPUs, and two
MultiWorkerMirroredStrategy workers. Every worker must end with the same weights, and the model
must be the one a single process trains on the same global batches (up to the dequantisation
noise, see test_recipes_match_one_process)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.train.test_distributed import _multiworker_environments

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = os.path.join(ROOT, "examples", "distributed")
HOROVODRUN = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "-np", "2", "-H",
              "localhost:2", "--gloo"]


def _env(**extra):
  return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, RECIPES]), **extra)


def _reports(outputs):
  reports = [json.loads(found) for output in outputs  # horovodrun prefixes "[rank]<stdout>:"
             for found in re.findall(r"REPORT (\{.*\})", output)]
  return sorted(reports, key=lambda r: r["rank"])


def _run(script, source=None, returncode=0):
  """Runs a recipe (or `source`, a changed copy of it) the way its docstring says; returns
  every process's output."""
  path = os.path.join(RECIPES, script)
  if source is not None:
    path = os.path.join(RECIPES, f"_changed_{os.getpid()}_{script}")
    with open(path, "w") as f:
      f.write(source)
  try:
    if script.startswith("horovod"):
      commands, environments = [HOROVODRUN + [sys.executable, path]], [_env()]
    elif script.startswith("multiworker"):
      environments = [_env(TF_CONFIG=e["TF_CONFIG"]) for e in _multiworker_environments()]
      commands = [[sys.executable, path]] * 2
    else:
      commands, environments = [[sys.executable, path]], [_env()]
    processes = [subprocess.Popen(command, cwd=RECIPES, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for command, env in zip(commands, environments)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
  finally:
    if source is not None:
      os.remove(path)
  if returncode is not None:
    for process, output in zip(processes, outputs):
      assert process.returncode == returncode, output[-4000:]
  return outputs


def _source(script):
  with open(os.path.join(RECIPES, script)) as f:
    return f.read()


RECIPE_WORKERS = {"horovod_keras.py": 2, "horovod_custom_loop.py": 2, "mirrored_fit.py": 1,
                  "multiworker_fit.py": 2}


@pytest.fixture(scope="module")
def recipe_reports():
  return {script: _reports(_run(script)) for script in RECIPE_WORKERS}


@pytest.fixture(scope="module")
def one_process():
  """The recipes' model trained by one process on the same 32-image global batches."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, RECIPES)
  try:
    import common  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(RECIPES)
  model = common.make_glow()
  untrained = float(np.mean(model.bits_per_dim(common.digits()[-64:], noise=False)))
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
  batches = tf.data.Dataset.from_tensor_slices(common.digits()).batch(common.GLOBAL_BATCH)
  model.fit(batches.repeat(), steps_per_epoch=common.STEPS, epochs=1, verbose=0)
  capture = []
  common.report.__globals__["print"] = lambda text, **_: capture.append(text)
  try:
    common.report(model, 0)
  finally:
    del common.report.__globals__["print"]
  return untrained, _reports(capture)[0]


@pytest.mark.parametrize("script", sorted(RECIPE_WORKERS))
def test_every_worker_ends_with_the_same_weights(script, recipe_reports):
  reports = recipe_reports[script]
  assert [r["rank"] for r in reports] == list(range(RECIPE_WORKERS[script]))
  for other in reports[1:]:
    for key in ("sum", "sum_of_squares", "test_bits_per_dim"):
      assert other[key] == pytest.approx(reports[0][key], rel=1e-9), (script, reports)


def test_mirrored_replicas_hold_the_same_values():
  output = _run("mirrored_fit.py")[0]
  sums = re.findall(r"replica (\d): first weight sum (\S+)", output)
  assert [r for r, _ in sums] == ["0", "1"] and sums[0][1] == sums[1][1], output[-2000:]


@pytest.mark.parametrize("script", sorted(RECIPE_WORKERS))
def test_recipes_match_one_process(script, recipe_reports, one_process):
  """Each replica draws its own batch's dequantisation noise from the same (seed, step), so a
  distributed run sees other noise samples than one process drawing the whole batch's: the
  arithmetic differs, and the bound is on the result. After 6 steps the learning itself moves
  test bits/dim by about 0.1 (untrained vs trained); the recipes must land within 0.01 of the
  one-process run. Horovod's recipes scale the learning rate by the number of workers (their
  guides' habit), so they are held to 0.05: still half of what training moves."""
  untrained, single = one_process
  moved = untrained - single["test_bits_per_dim"]
  assert moved > 0.05, (untrained, single)  # training moved it: the comparison bites
  bound = 0.05 if script.startswith("horovod") else 0.01
  for report in recipe_reports[script]:
    assert abs(report["test_bits_per_dim"] - single["test_bits_per_dim"]) < bound, (
        script, report, single, untrained)


def test_horovod_keras_recipe_without_distributed_optimizer_is_refused():
  source = _source("horovod_keras.py").replace(
      "hvd.DistributedOptimizer(tf_keras.optimizers.Adam(scaled_lr))",
      "tf_keras.optimizers.Adam(scaled_lr)")
  assert "DistributedOptimizer" not in source.split("optimizer = ")[1].splitlines()[0]
  outputs = _run("horovod_keras.py", source, returncode=None)
  assert "hold different gradients" in "".join(outputs), outputs[0][-3000:]
  assert not _reports(outputs)


def test_horovod_custom_loop_without_distributed_tape_is_refused():
  source = _source("horovod_custom_loop.py").replace(
      "  tape = hvd.DistributedGradientTape(tape)\n", "")
  assert "DistributedGradientTape" not in source
  outputs = _run("horovod_custom_loop.py", source, returncode=None)
  assert "hold different gradients" in "".join(outputs), outputs[0][-3000:]
  assert not _reports(outputs)


REFUSALS = '''
import tensorflow as tf, tf_keras
import horovod.tensorflow.keras as hvd
from tfinvconv.training import GuardedTraining
from common import GLOBAL_BATCH, digits, make_glow
hvd.init()
data = tf.data.Dataset.from_tensor_slices(digits()).shard(2, hvd.rank()).batch(16).repeat()
cases = {
    "plain": lambda: (make_glow(), tf_keras.optimizers.Adam(1e-3)),
    "legacy": lambda: (make_glow(), tf_keras.optimizers.legacy.Adam(1e-3)),
    "guarded": lambda: (GuardedTraining(make_glow()), tf_keras.optimizers.Adam(1e-3)),
    "averaged": lambda: (make_glow(), hvd.DistributedOptimizer(tf_keras.optimizers.Adam(1e-3))),
    "guarded_averaged": lambda: (GuardedTraining(make_glow()),
                                 hvd.DistributedOptimizer(tf_keras.optimizers.Adam(1e-3))),
}
for name, make in cases.items():
  model, optimizer = make()
  model.compile(optimizer=optimizer)
  try:
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0,
              callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    print(f"CASE {name} trained", flush=True)
  except tf.errors.InvalidArgumentError as error:
    said = "hold different gradients" in str(error) and "DistributedOptimizer" in str(error)
    print(f"CASE {name} refused {said}", flush=True)
'''


def test_every_gradient_path_without_averaging_is_refused():
  """Glow.fit's compute_gradients + apply_gradients with a new and a legacy optimizer, and the
  guarded step: refused without Horovod's averaging, trained with it."""
  outputs = _run("horovod_refusals.py", REFUSALS)
  cases = dict(re.findall(r"CASE (\w+) (.+)", outputs[0]))
  assert cases == {"plain": "refused True", "legacy": "refused True",
                   "guarded": "refused True", "averaged": "trained",
                   "guarded_averaged": "trained"}, outputs[0][-4000:]


def test_the_docs_show_the_recipes_as_tested():
  with open(os.path.join(ROOT, "docs", "multi_gpu.md")) as f:
    docs = f.read()
  for script in list(RECIPE_WORKERS) + ["common.py"]:
    block = re.search(rf"<!-- recipe:{re.escape(script)} -->\n```python\n(.*?)```\n", docs,
                      re.S)
    assert block, f"docs/multi_gpu.md does not show examples/distributed/{script}"
    assert block.group(1) == _source(script), f"docs/multi_gpu.md's {script} differs from the file"
