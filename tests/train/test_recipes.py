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

pytestmark = pytest.mark.slow  # horovodrun, recipe processes

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
def recipe_outputs():
  """Every recipe run once, as its docstring says: {script: every process's output}."""
  return {script: _run(script) for script in RECIPE_WORKERS}


@pytest.fixture(scope="module")
def recipe_reports(recipe_outputs):
  return {script: _reports(outputs) for script, outputs in recipe_outputs.items()}


def _common():
  sys.path.insert(0, RECIPES)
  try:
    import common  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(RECIPES)
  return common


def _test_bits_per_dim(model):
  return float(np.mean(model.bits_per_dim(_common().digits()[-64:], noise=False)))


@pytest.fixture(scope="module")
def one_process():
  """Test bits/dim of the recipes' model trained by one process on the same 32-image global
  batches, per learning rate; and of the model initialised but untrained."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  common = _common()
  batches = tf.data.Dataset.from_tensor_slices(common.digits()).batch(common.GLOBAL_BATCH)
  untrained = common.make_glow()
  untrained.initialize(common.digits()[:common.GLOBAL_BATCH])
  trained = {}
  for learning_rate in (1e-3, 2e-3):
    model = common.make_glow()
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate))
    model.fit(batches.repeat(), steps_per_epoch=common.STEPS, epochs=1, verbose=0)
    trained[learning_rate] = _test_bits_per_dim(model)
  return _test_bits_per_dim(untrained), trained


@pytest.mark.parametrize("script", sorted(RECIPE_WORKERS))
def test_every_worker_ends_with_the_same_weights(script, recipe_reports):
  reports = recipe_reports[script]
  assert [r["rank"] for r in reports] == list(range(RECIPE_WORKERS[script]))
  for other in reports[1:]:
    for key in ("sum", "sum_of_squares", "test_bits_per_dim"):
      assert other[key] == pytest.approx(reports[0][key], rel=1e-9), (script, reports)


def test_mirrored_replicas_hold_the_same_values(recipe_outputs):
  output = recipe_outputs["mirrored_fit.py"][0]
  sums = re.findall(r"replica (\d): first weight sum (\S+)", output)
  assert [r for r, _ in sums] == ["0", "1"] and sums[0][1] == sums[1][1], output[-2000:]


# The learning rate each recipe ends at (Horovod's recipes scale it by the number of workers,
# as Horovod's guides do), and how far from one process it may land: the replicas draw their
# own dequantisation noise, which moves the result by up to 0.011 between two noise seeds of
# one process (measured), and horovod_keras.py warms its rate up over the first epoch.
RECIPE_RATES = {"horovod_keras.py": (2e-3, 0.05), "horovod_custom_loop.py": (2e-3, 0.025),
                "mirrored_fit.py": (1e-3, 0.025), "multiworker_fit.py": (1e-3, 0.025)}


@pytest.mark.parametrize("script", sorted(RECIPE_WORKERS))
def test_recipes_match_one_process(script, recipe_reports, one_process):
  """Each replica draws its batch's dequantisation noise from the same (seed, step), so a
  distributed run sees other noise samples than one process drawing the whole batch's: the
  arithmetic differs, and the bound is on the result. Six steps move test bits/dim by 0.1-0.2
  (untrained vs trained): a run that did not average, or trained at another rate, misses."""
  untrained, trained = one_process
  learning_rate, bound = RECIPE_RATES[script]
  assert untrained - trained[learning_rate] > 3 * bound, (untrained, trained)  # it bites
  for report in recipe_reports[script]:
    assert abs(report["test_bits_per_dim"] - trained[learning_rate]) < bound, (
        script, report, trained, untrained)


def test_horovod_keras_recipe_without_distributed_optimizer_is_refused():
  source = _source("horovod_keras.py").replace(
      "hvd.DistributedOptimizer(tf_keras.optimizers.Adam(scaled_lr))",
      "tf_keras.optimizers.Adam(scaled_lr)")
  assert "DistributedOptimizer" not in source.split("optimizer = ")[1].splitlines()[0]
  outputs = _run("horovod_keras.py", source, returncode=None)
  assert "hold different gradients" in "".join(outputs), outputs[0][-3000:]
  # The step is refused (InvalidArgumentError) with a message that names the fix.
  said = [line for line in "".join(outputs).splitlines() if "hold different gradients" in line]
  assert any("DistributedOptimizer" in line for line in said), said
  assert "InvalidArgumentError" in "".join(outputs), outputs[0][-3000:]
  assert not _reports(outputs)


def test_horovod_custom_loop_without_distributed_tape_is_refused():
  source = _source("horovod_custom_loop.py").replace(
      "  tape = hvd.DistributedGradientTape(tape)\n", "")
  assert "hvd.DistributedGradientTape(tape)" not in source
  outputs = _run("horovod_custom_loop.py", source, returncode=None)
  assert "hold different gradients" in "".join(outputs), outputs[0][-3000:]
  assert not _reports(outputs)


# Glow.fit under Horovod's Keras API, each case a model of its own; a refusal is an
# InvalidArgumentError on both ranks at the same step, after which the next case starts. (A
# new optimizer without DistributedOptimizer is the Keras recipe's own refusal test above.)
REFUSALS = '''
import tensorflow as tf, tf_keras
import horovod.tensorflow.keras as hvd
from tfinvconv.guarded_training import GuardedTraining
from tfinvconv.models import Glow
from common import make_glow, worker_batches
hvd.init()
data = worker_batches(hvd.rank(), hvd.size())
reversible_glow = lambda: Glow((8, 8, 1), num_levels=2, depth=2, hidden_channels=8,
                               mixer="inverse_conv", n_bins=17, seed=0, backprop="reversible")
cases = {
    "legacy": lambda: (make_glow(), tf_keras.optimizers.legacy.Adam(1e-3)),
    "guarded": lambda: (GuardedTraining(make_glow()), tf_keras.optimizers.Adam(1e-3)),
    "averaged": lambda: (make_glow(), hvd.DistributedOptimizer(tf_keras.optimizers.Adam(1e-3))),
    "guarded_averaged": lambda: (GuardedTraining(make_glow()),
                                 hvd.DistributedOptimizer(tf_keras.optimizers.Adam(1e-3))),
    "reversible": lambda: (reversible_glow(), tf_keras.optimizers.Adam(1e-3)),
    "reversible_averaged": lambda: (reversible_glow(),
                                    hvd.DistributedOptimizer(tf_keras.optimizers.Adam(1e-3))),
}
for name, make in cases.items():
  model, optimizer = make()
  model.compile(optimizer=optimizer)
  try:
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0,
              callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    print(f"FIT {name} trained", flush=True)
    weights = sum(float(tf.reduce_sum(tf.cast(v, tf.float64))) for v in model.trainable_variables)
    print(f"FITWEIGHTS {name} {hvd.rank()} {weights!r}", flush=True)
  except tf.errors.InvalidArgumentError as error:
    said = "hold different gradients" in str(error) and "DistributedOptimizer" in str(error)
    print(f"FIT {name} refused {said}", flush=True)
'''


@pytest.fixture(scope="module")
def gradient_checks():
  """REFUSALS, then LOOPS, in one horovodrun (one start of two TensorFlow processes): what
  rank 0 and rank 1 printed, each line without horovodrun's prefix, and horovodrun's whole
  output."""
  outputs = _run("horovod_gradient_checks.py", REFUSALS + LOOPS)
  ranks = ["\n".join(line.split(":", 1)[1] for line in outputs[0].splitlines()
                     if line.startswith(f"[{rank}]<stdout>:")) for rank in (0, 1)]
  return ranks, outputs[0]


def test_every_gradient_path_without_averaging_is_refused(gradient_checks):
  """Glow.fit's compute_gradients + apply_gradients with a legacy optimizer (a new one: the
  Keras recipe's refusal test), the guarded step and a backprop="reversible" Glow: refused
  without Horovod's averaging, trained with it (the reversible one's workers identical)."""
  ranks, output = gradient_checks
  for rank, lines in enumerate(ranks):
    cases = dict(re.findall(r"FIT (\w+) (.+)", lines))
    assert cases == {"legacy": "refused True", "guarded": "refused True",
                     "averaged": "trained", "guarded_averaged": "trained",
                     "reversible": "refused True", "reversible_averaged": "trained"}, (
                         rank, output[-4000:])
  # Reversible backprop under DistributedOptimizer: the workers end identical.
  weights = dict(re.findall(r"FITWEIGHTS reversible_averaged (\d) (\S+)", output))
  assert weights.keys() == {"0", "1"} and weights["0"] == weights["1"], weights


LOOPS = '''
import os, tempfile
import tensorflow as tf, tf_keras
import horovod.tensorflow as hvd
from tfinvconv.models import export_saved_model
from common import make_glow, worker_batches
hvd.init()
batches = iter(worker_batches(hvd.rank(), hvd.size()))


def train(apply, wrap_tape, broadcast, compiled=True, calls=1):
  """A user's own loop, as Horovod's TensorFlow 2 guide writes it, without our gradient check:
  ActNorm initialises in the first step, from each worker's own batch."""
  model, optimizer = make_glow(), tf_keras.optimizers.Adam(1e-3)

  def step(images):
    with tf.GradientTape() as tape:  # `calls` log-densities, on parts of the batch
      loss = tf.add_n([tf.reduce_mean(model.bits_per_dim(part))
                       for part in tf.split(images, calls)])
    tape = wrap_tape(tape)
    if apply == "minimize":
      optimizer.minimize(loss, model.trainable_variables, tape=tape)
    else:
      gradients = tape.gradient(loss, model.trainable_variables)
      optimizer.apply_gradients(zip(gradients, model.trainable_variables))

  step = tf.function(step) if compiled else step
  for i in range(3):
    step(next(batches))
    if i == 0 and broadcast:  # where Horovod's guide broadcasts: after the first step
      hvd.broadcast_variables(model.variables, root_rank=0)
      hvd.broadcast_variables(optimizer.variables, root_rank=0)
  return model


plain = lambda tape: tape
cases = {
    "averaged": ("apply", hvd.DistributedGradientTape, True),
    "averaged_two_calls": ("apply", hvd.DistributedGradientTape, True, True, 2),
    "plain_tape": ("apply", plain, True),
    "plain_tape_eager": ("apply", plain, True, False),
    "plain_minimize": ("minimize", plain, True),
    "never_broadcast": ("apply", hvd.DistributedGradientTape, False),
}
for name, case in cases.items():
  try:
    model = train(*case)
  except tf.errors.InvalidArgumentError as error:
    said = "hold different weights" in str(error) and "broadcast_variables" in str(error)
    print(f"LOOP {name} refused {said}", flush=True)
    continue
  weights = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float64)) for v in model.trainable_variables])
  print(f"LOOP {name} trained", flush=True)
  print(f"WEIGHTS {name} {hvd.rank()} {float(weights)!r}", flush=True)
  if name == "averaged":
    folder = tempfile.mkdtemp()
    export_saved_model(model, folder)  # under Horovod: the SavedModel must not need it
    with open(os.path.join(folder, "saved_model.pb"), "rb") as f:
      print(f"EXPORT holds Horovod ops: {b'Horovod' in f.read()}", flush=True)
'''


def test_a_users_own_loop_without_averaging_or_broadcast_is_refused(gradient_checks):
  """Loops that never call our check: a plain tape (in a tf.function and eagerly) or `minimize`
  with a plain optimizer, or averaged gradients from weights never broadcast, are refused at the
  step after the weights parted, naming the fix. Horovod's own TF2 recipe (average, broadcast
  after the first step) trains, also with two log-density calls per step; its workers agree,
  and its SavedModel holds no Horovod op."""
  ranks, output = gradient_checks
  for rank, lines in enumerate(ranks):
    cases = dict(re.findall(r"LOOP (\w+) (.+)", lines))
    assert cases == {"averaged": "trained", "averaged_two_calls": "trained",
                     "plain_tape": "refused True",
                     "plain_tape_eager": "refused True", "plain_minimize": "refused True",
                     "never_broadcast": "refused True"}, (
                         rank, output[-4000:])
    assert "EXPORT holds Horovod ops: False" in lines
  for name in ("averaged", "averaged_two_calls"):
    weights = dict(re.findall(rf"WEIGHTS {name} (\d) (\S+)", output))
    assert weights.keys() == {"0", "1"} and weights["0"] == weights["1"], (name, weights)


def test_the_docs_show_the_recipes_as_tested():
  with open(os.path.join(ROOT, "docs", "multi_gpu.md")) as f:
    docs = f.read()
  for script in list(RECIPE_WORKERS) + ["common.py"]:
    block = re.search(rf"<!-- recipe:{re.escape(script)} -->\n```python\n(.*?)```\n", docs,
                      re.S)
    assert block, f"docs/multi_gpu.md does not show examples/distributed/{script}"
    assert block.group(1) == _source(script), (
        f"docs/multi_gpu.md's {script} differs from the file: run `python tools/sync_recipes.py`")
