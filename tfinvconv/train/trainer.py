"""The training run: model, data, distribution, checkpoints and outputs, from one config."""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras

from tfinvconv import training
from tfinvconv.models import Glow
from tfinvconv.models import workers
from tfinvconv.models.glow import check_bins as glow_check_bins
from tfinvconv.train import baseline
from tfinvconv.train import callbacks as cb
from tfinvconv.train import data
from tfinvconv.train import distributed
from tfinvconv.train import elastic

EXIT_NONFINITE = 3
EXIT_LOST_WORKER = 4
# --mixed-precision: the tf_keras policy the coupling networks are built under.
POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@dataclasses.dataclass
class Config:
  """Everything a run needs (a preset fills most of it; flags override)."""
  dataset: str = "digits"
  image_size: int = 8
  num_levels: int = 2
  depth: int = 8
  hidden_channels: int = 128
  coupling: str = "affine"
  n_bits: int = 8
  n_bins: int = 0                # grey levels of the data; 0: 2**n_bits
  dequantization: str = "uniform"  # or "variational" (a learned q(u | x), Flow++)
  batch_size: int = 64           # per replica (per GPU / process)
  learning_rate: float = 1e-3    # the run's rate; times the number of replicas with scale_lr
  scale_lr: bool = False         # openai/glow kept 1e-3 on 8 GPUs; --scale-lr: Horovod's habit
  warmup_epochs: float = 1.0
  epochs: int = 20
  steps_per_epoch: int = 0       # 0: one pass over the (sharded) training set
  kernel_size: int = 3
  mixer: str = "inverse_conv"
  implementation: str = "auto"
  mixed_precision: str = "none"  # coupling networks in "bfloat16" / "float16"; rest float32
  data_dir: str = ""
  run_dir: str = ""
  resume: bool = False
  checkpoint_every: int = 100    # steps
  commit_every: int = 10         # Horovod elastic: steps between in-memory commits of the state
  max_nonfinite: int = 10        # consecutive skipped steps before giving up
  seed: int = 0
  strategy: str = ""             # "", "mirrored" or "multiworker"
  cpu_replicas: int = 1          # mirrored without GPUs: logical CPU devices, one replica each
  connect_timeout: int = 300     # multiworker: seconds to wait for every worker to join
  num_samples: int = 64
  overwrite: bool = False        # start over in a run folder that holds another run's outputs
  verbose: bool = True

  def folder(self):
    """The run folder: --run-dir, or runs/<dataset>-<mixer>."""
    return self.run_dir or os.path.join("runs", f"{self.dataset.replace('/', '_')}-{self.mixer}")

  def validate(self):
    """Raises ValueError naming the first value no run could use."""
    positive = ("image_size", "num_levels", "depth", "hidden_channels", "batch_size", "epochs",
                "kernel_size", "checkpoint_every", "commit_every", "max_nonfinite", "num_samples",
                "cpu_replicas", "connect_timeout")
    for name in positive:
      value = getattr(self, name)
      if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if self.steps_per_epoch < 0:
      raise ValueError(f"--steps-per-epoch must be >= 0 (0: one pass over the data), got "
                       f"{self.steps_per_epoch}")
    try:
      glow_check_bins(self.n_bits, self.n_bins or None)
    except ValueError as error:
      raise ValueError(f"--n-bits/--n-bins: {error}") from None
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"--learning-rate must be a positive number, got {self.learning_rate}")
    if not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
      raise ValueError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
    if not 0 <= self.seed < 2 ** 32:
      raise ValueError(f"--seed must be in 0..{2 ** 32 - 1}, got {self.seed}")
    if self.cpu_replicas > 1 and self.strategy != "mirrored":
      raise ValueError("--cpu-replicas splits the CPU for --strategy mirrored only")
    if self.mixed_precision not in POLICIES:
      raise ValueError(f"--mixed-precision must be one of {', '.join(POLICIES)}, got "
                       f"{self.mixed_precision!r}")
    if self.resume and self.overwrite:
      raise ValueError("--resume and --overwrite contradict each other: pick one")
    data.check_dataset_name(self.dataset)


@tf_keras.saving.register_keras_serializable(package="tfinvconv_train")
class WarmupSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up to `peak` over `warmup_steps`, then constant (openai/glow)."""

  def __init__(self, peak, warmup_steps):
    self.peak, self.warmup_steps = float(peak), max(1, int(warmup_steps))

  def __call__(self, step):
    fraction = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / self.warmup_steps)
    return self.peak * fraction

  def get_config(self):
    return {"peak": self.peak, "warmup_steps": self.warmup_steps}


# What a run writes into its folder; --overwrite removes exactly these.
RUN_OUTPUTS = ("checkpoints", "samples", "tensorboard", "ranks", "metrics.json")


def run(config):
  """Trains; returns a process exit code (0 done, 3 non-finite stop, 128+N on signal N)."""
  config.validate()
  with cb.SignalFlag() as signals, _global_policy(POLICIES[config.mixed_precision]):
    return _run(config, signals)


@contextlib.contextmanager
def _global_policy(name):
  """The tf_keras policy while the run builds its model; the caller's one afterwards."""
  before = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(before)


def _claim_run_dir(run_dir, config):
  """A folder holding another run's checkpoints is only continued (--resume) or cleared
  (--overwrite), never mixed with a new run. Returns the refusal message, or None."""
  checkpoints = os.path.join(run_dir, "checkpoints")
  if config.resume or not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
    return None
  if not config.overwrite:
    return (f"run folder {run_dir} already holds checkpoints of a run: pass --resume to "
            "continue it, --overwrite to start over there (its checkpoints, samples, "
            "TensorBoard logs and metrics are deleted), or a new --run-dir")
  for name in RUN_OUTPUTS:
    path = os.path.join(run_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  return None


def _run(config, signals):
  """The run in its steps: engine, run folder, data, model, restore or initialise, fit, outputs."""
  engine = distributed.make_engine(config.strategy or None, config.cpu_replicas,
                                   config.connect_timeout)
  signals.reclaim()
  tf_keras.utils.set_random_seed(config.seed)  # same weights everywhere before any broadcast
  _check_elastic(config, engine)
  run_dir, refusal = _claim_on_chief(engine, config)
  log = print if (engine.is_chief and config.verbose) else (lambda *a, **k: None)
  splits = _Splits(config, engine)
  trainee, schedule = _build(config, engine, splits)
  log(f"{engine.name}: {engine.size} worker(s), {engine.replicas} replica(s); "
      f"{trainee.flow.count_params():,} parameters; {splits.steps_per_epoch} steps/epoch; run "
      f"folder {os.path.abspath(run_dir)}")
  checkpoints = _Checkpoints(trainee, run_dir, engine)
  try:
    _restore_or_initialise(config, engine, trainee, checkpoints, splits, log)
  except ValueError as error:  # elastic: said on every worker after the first sync
    if not engine.elastic:
      raise
    refusal = refusal or str(error)
  callbacks = _RunCallbacks(config, engine, trainee, checkpoints, splits, signals, run_dir)
  if engine.elastic:
    history = _ElasticFit(config, engine, trainee, schedule, checkpoints.position, splits,
                          callbacks, refusal)()
  else:
    history = _fit_until_done(config, engine, trainee, checkpoints, splits, signals, callbacks)
  return _finish(config, engine, trainee, checkpoints, splits, run_dir, callbacks, history, log)


def _finish(config, engine, trainee, checkpoints, splits, run_dir, callbacks, history, log):
  """Why the run stopped early, or its last checkpoint, test bits/dim and outputs; returns the
  exit code."""
  step = cb.step_of(trainee)
  if callbacks.guard.failure:
    if engine.is_chief:
      print(f"error: {callbacks.guard.failure}", file=sys.stderr, flush=True)
    return EXIT_NONFINITE
  if callbacks.control.interrupted:
    log(f"interrupted by signal {callbacks.control.interrupted} at step {step}: checkpoint "
        "saved; continue with --resume")
    return 128 + int(callbacks.control.interrupted)
  checkpoints.save(step)
  test_bpd = engine.average({"bpd": _evaluate(trainee, splits.test_data)})["bpd"]
  checkpoints.close()
  _write_rank_summary(run_dir, engine, trainee.flow, history)
  if engine.is_chief:
    _write_outputs(config, engine, trainee, splits, run_dir, callbacks, history, test_bpd, log)
  return 0


def _check_elastic(config, engine):
  """Refuses the settings an elastic run cannot keep while its workers come and go."""
  if not engine.elastic:
    return
  if config.scale_lr:
    raise ValueError("--scale-lr multiplies by the number of workers, which changes in an "
                     "elastic run: leave it off and set --learning-rate")
  if config.steps_per_epoch:
    raise ValueError("--steps-per-epoch: an elastic run's epochs are passes over the data "
                     "(their steps change with the number of workers): leave it at 0")


def _claim_on_chief(engine, config):
  """The run folder, claimed by the chief for every worker (they may not see its files), and
  the refusal, if any. An elastic run carries the refusal to every worker in its first state
  sync (a collective now would meet a joining worker out of step); others raise it here."""
  run_dir = config.folder()
  refusal = engine.broadcast_object(_claim_run_dir(run_dir, config) if engine.is_chief
                                    else None)
  if refusal and not engine.elastic:
    raise ValueError(refusal)
  if engine.is_chief and not refusal:
    os.makedirs(run_dir, exist_ok=True)
  return run_dir, refusal


class _Splits:
  """The run's data: both splits, this worker's shard, batch sizes and the step plan."""

  def __init__(self, config, engine):
    self.config, self.engine = config, engine
    self.channels = data.image_channels(config.dataset)
    load = lambda split: data.load_split(config.dataset, split, config.image_size,
                                         self.channels, config.data_dir or None)
    self.train_images, self.test_images = load("train"), load("test")
    self.input_batch = engine.input_batch(config.batch_size)
    self.reshard()
    self.steps_per_epoch = config.steps_per_epoch or max(
        1, self.train_images.count() // self.global_batch)
    self.total_steps = config.epochs * self.steps_per_epoch

  def reshard(self):
    """This worker's shard and seed for the engine's rank and size (again after an elastic
    membership change)."""
    engine = self.engine
    self.num_shards, self.shard_index = engine.shard()
    self.global_batch = self.config.batch_size * engine.replicas
    # Data order: Horovod shards first, then each rank shuffles its shard with its own seed;
    # tf.distribute shards batches afterwards (DATA policy): the same order everywhere.
    self.seed = (self.config.seed if engine.shared_init_batch
                 else distributed.seed_for(engine, self.config.seed))
    self.test_data = engine.distribute(data.pipeline(
        self.test_images, self.input_batch, self.num_shards, self.shard_index, training=False))

  def training_data(self, skip):
    """The training stream after `skip` steps' batches."""
    return self.engine.distribute(data.pipeline(
        self.train_images, self.input_batch, self.num_shards, self.shard_index, training=True,
        seed=self.seed, skip_batches=skip))

  def epoch_data(self, position):
    """Elastic runs: this worker's batches for the rest of the epoch at `position`, and their
    number (every worker reads one shuffle of the epoch, in global steps)."""
    return data.epoch_pipeline(self.train_images, self.config.batch_size, self.num_shards,
                               self.shard_index, self.config.seed, int(position.epoch.numpy()),
                               int(position.images.numpy()))

  def init_batch(self):
    """ActNorm's first batch. Horovod: each worker its own (rank 0's values are broadcast);
    tf.distribute: the same batch everywhere (the unsharded stream)."""
    shared = self.engine.shared_init_batch or self.num_shards == 1
    stream = data.pipeline(self.train_images, self.config.batch_size, training=True,
                           seed=self.config.seed, num_shards=1 if shared else self.num_shards,
                           shard_index=0 if shared else self.shard_index)
    return next(iter(stream))


def _build(config, engine, splits):
  """The model, wrapped in the guarded step, compiled with the engine's optimizer; and the
  learning-rate schedule."""
  with engine.scope():
    model = Glow((config.image_size, config.image_size, splits.channels), config.num_levels,
                 config.depth, config.hidden_channels, mixer=config.mixer,
                 kernel_size=config.kernel_size, coupling=config.coupling,
                 n_bits=config.n_bits, n_bins=config.n_bins or None,
                 dequantization=config.dequantization,
                 implementation=config.implementation,
                 seed=distributed.seed_for(engine, config.seed))
    trainee = training.GuardedTraining(model)
    peak = config.learning_rate * (engine.replicas if config.scale_lr else 1)
    schedule = WarmupSchedule(peak, config.warmup_epochs * splits.steps_per_epoch)
    # compile settles the optimizer (under mixed_float16 a LossScaleOptimizer around it): the
    # one the checkpoint holds, with its loss scale.
    trainee.compile(optimizer=engine.wrap_optimizer(tf_keras.optimizers.Adam(schedule)))
    trainee.optimizer.build(model.trainable_variables)  # slots exist: restorable, broadcastable
  return trainee, schedule


class _Checkpoints:
  """Rank 0 writes checkpoints; other multi-worker replicas must join each save, into scratch.
  An elastic run's checkpoints hold its data position too, and are written by whichever worker
  is rank 0 at the time."""

  def __init__(self, trainee, run_dir, engine):
    self.trainee, self.engine = trainee, engine
    self.directory = os.path.join(run_dir, "checkpoints")
    self.position = elastic.DataPosition() if engine.elastic else None
    self.objects = {"data_position": self.position} if engine.elastic else {}
    self.scratch = None
    if engine.saves_on_every_worker and not engine.is_chief:
      self.scratch = tempfile.mkdtemp(prefix="tfinvconv-worker-")
    self.manager = None

  def save(self, step):
    if self.manager is None and (self.engine.is_chief or self.scratch):
      self.manager = tf.train.CheckpointManager(self.trainee.checkpoint(**self.objects),
                                                self.scratch or self.directory, max_to_keep=3)
    if self.manager is not None:  # CheckpointManager writes the index last, atomically
      self.manager.save(checkpoint_number=step)

  def restore(self, prefix):
    _restore(self.trainee, prefix, self.objects)

  def close(self):
    if self.scratch:
      shutil.rmtree(self.scratch, ignore_errors=True)


def _restore_or_initialise(config, engine, trainee, checkpoints, splits, log):
  """Rank 0 decides whether to resume (other ranks may not see its files) and the engine
  broadcasts its restored state; a new run initialises ActNorm from data instead. In an elastic
  run every worker reads what it can see (whichever ends up rank 0 may hold the checkpoint) and
  the first state sync broadcasts rank 0's state."""
  model, optimizer = trainee.flow, trainee.optimizer
  reads = engine.is_chief or engine.elastic
  latest = (_readable_checkpoint(checkpoints.directory) if (config.resume and reads)
            else None)
  latest = engine.broadcast_object(latest)
  if config.resume and latest is None:
    log("--resume: no checkpoint yet, starting from scratch")
    if engine.elastic and engine.is_chief:
      print(f"warning: --resume found no checkpoint in {checkpoints.directory} on this host "
            f"({socket.gethostname()}); an elastic run's rank 0 can start on any host, so keep "
            "--run-dir on a folder every host sees", file=sys.stderr, flush=True)
  if latest:
    if os.path.exists(latest + ".index"):
      checkpoints.restore(latest)
    engine.broadcast_variables(model.variables + optimizer.variables +
                               list(trainee.counters.variables))
    log(f"resumed from {latest} at step {cb.step_of(trainee)}")
  else:
    model.initialize(splits.init_batch())
    engine.broadcast_variables(model.variables)


class _RunCallbacks:
  """The callbacks of `fit`, in order: metric averaging first (every later one sees global
  numbers), then the non-finite guard, checkpoints and signals, progress, and the chief's
  report (TensorBoard and samples)."""

  def __init__(self, config, engine, trainee, checkpoints, splits, signals, run_dir):
    self.control = cb.RunControl(engine, checkpoints.save, config.checkpoint_every, signals)
    self.guard = cb.NonFiniteStop(config.max_nonfinite)
    self.progress = cb.Progress(splits.steps_per_epoch, config.epochs, splits.global_batch,
                                show=engine.is_chief and config.verbose)
    self.report = (cb.Report(run_dir, config.num_samples, seed=config.seed) if engine.is_chief
                   else None)
    self.all = [cb.AverageMetrics(engine), self.guard, self.control, self.progress]
    self.elastic_stats = None  # an elastic run's resets and steps re-done
    if self.report:
      self.all.append(self.report)

  @property
  def stopped(self):
    return bool(self.control.interrupted or self.guard.failure)


def _extend(history, result):
  for key, values in result.history.items():
    history.setdefault(key, []).extend(values)


def _fit_until_done(config, engine, trainee, checkpoints, splits, signals, callbacks):
  """`fit` until the planned steps are done, a signal stops every worker or the non-finite
  guard gives up. A resumed run first finishes the epoch it stopped in, so it takes exactly
  the steps (and data) of an uninterrupted one."""
  history = {}
  step = cb.step_of(trainee)
  while step < splits.total_steps and not trainee.stop_training:
    epoch, done_in_epoch = divmod(step, splits.steps_per_epoch)
    _extend(history, trainee.fit(
        splits.training_data(step), epochs=epoch + 1 if done_in_epoch else config.epochs,
        initial_epoch=epoch, steps_per_epoch=splits.steps_per_epoch - done_in_epoch,
        validation_data=splits.test_data, callbacks=callbacks.all, verbose=0))
    new_step = cb.step_of(trainee)
    if new_step == step or callbacks.stopped:
      break
    step = new_step
    if step < splits.total_steps and engine.any(signals.signum is not None):  # between fits
      callbacks.control.interrupted = signals.signum or signal.SIGTERM
      checkpoints.save(step)
      break
  return history


class _ElasticFit:
  """`fit` one epoch at a time from the committed data position, under Horovod's elastic loop
  (tfinvconv/train/elastic.py), until the planned epochs are done or the run stops. After each
  sync every worker takes rank 0's settings (its refusal of the run, its warm-up length, which a
  worker started at another size would compute differently), and the run counts its resets and
  the steps this worker ran again after a rollback."""

  def __init__(self, config, engine, trainee, schedule, position, splits, callbacks, refusal):
    self.config, self.engine, self.trainee, self.schedule = config, engine, trainee, schedule
    self.position, self.splits, self.callbacks = position, splits, callbacks
    self.state = elastic.make_state(engine.hvd, trainee, position, refusal=refusal,
                                    warmup_steps=schedule.warmup_steps)
    self.state.register_reset_callbacks([self.reset])
    self.commit = elastic.Commit(self.state, position, config.commit_every)
    averaging, *others = callbacks.all
    self.fit_callbacks = [averaging, self.commit, *others]  # position moved before checkpoints
    self.first_step = None  # this worker's, after its first sync
    self.history = {}
    callbacks.elastic_stats = {"resets": 0, "steps_redone": 0}

  def __call__(self):
    elastic.run(self.engine.hvd, self.state, self.synced, self.train_epoch, self.done)
    ran_forward = cb.step_of(self.trainee) - (self.first_step or 0)
    self.callbacks.elastic_stats["steps_redone"] = self.commit.steps_run - ran_forward
    return self.history

  def done(self):
    return int(self.position.epoch.numpy()) >= self.config.epochs

  def synced(self):
    if self.state.refusal:  # every worker stops
      raise ValueError(self.state.refusal)
    if self.state.warmup_steps != self.schedule.warmup_steps:
      optimizer = getattr(self.trainee.optimizer, "inner_optimizer", self.trainee.optimizer)
      optimizer.learning_rate = WarmupSchedule(self.schedule.peak, self.state.warmup_steps)
    if self.first_step is None:
      self.first_step = cb.step_of(self.trainee)

  def reset(self):
    """Horovod re-formed the job: new rank and size; steps traced again for them."""
    self.engine.refresh()
    self.splits.reshard()
    self.trainee.train_function = self.trainee.test_function = None
    workers.restart_first_step(self.trainee.flow)
    self.callbacks.elastic_stats["resets"] += 1
    if self.engine.is_chief and self.config.verbose:
      print(f"\nelastic: {self.engine.size} worker(s) now; going on from step "
            f"{cb.step_of(self.trainee)} (epoch {int(self.position.epoch.numpy()) + 1}, "
            f"{int(self.position.images.numpy())} images in)", flush=True)

  def train_epoch(self):
    """The rest of the epoch; False when the run stopped (signal, non-finite guard)."""
    stream, steps = self.splits.epoch_data(self.position)
    if not steps and not int(self.position.images.numpy()):
      raise ValueError(f"the training split has fewer images than one step of all workers "
                       f"({self.splits.global_batch}): lower --batch-size")
    progress = self.callbacks.progress
    self.commit.images_per_step = progress.images_per_step = self.splits.global_batch
    progress.steps_per_epoch = steps
    if steps:
      epoch = int(self.position.epoch.numpy())
      _extend(self.history, self.trainee.fit(
          stream, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps,
          validation_data=self.splits.test_data, callbacks=self.fit_callbacks, verbose=0))
    if self.callbacks.stopped:
      return False
    self.position.next_epoch()
    return True


def _write_outputs(config, engine, trainee, splits, run_dir, callbacks, history, test_bpd, log):
  """The chief's outputs: final samples, metrics.json beside the per-pixel baseline."""
  model, optimizer, progress = trainee.flow, trainee.optimizer, callbacks.progress
  step = cb.step_of(trainee)
  report = callbacks.report
  if report is None:  # an elastic run whose rank 0 changed hosts
    report = cb.Report(run_dir, config.num_samples, seed=config.seed)
    report.set_model(trainee)
  sample_paths = report.samples("final")
  baseline_bpd, baseline_train, baseline_test = baseline.source_bits_per_dim(
      splits.train_images, splits.test_images, model.n_bins)
  metrics = {
      "preset_dataset": config.dataset, "mixer": config.mixer, "steps": step,
      "train_bits_per_dim": (history.get("bits_per_dim") or [float("nan")])[-1],
      "test_bits_per_dim": test_bpd, "n_bins": model.n_bins,
      "baseline_bits_per_dim": baseline_bpd,
      "baseline": f"per-pixel histogram of {baseline_train} training images, evaluated on "
                  f"{baseline_test} test images (tfinvconv/train/baseline.py)",
      "params": int(model.count_params()),
      "step_time_ms": 1e3 * float(np.median(progress.step_times[1:] or [float("nan")])),
      "images_per_sec": progress.images_per_second,
      "nonfinite_steps": int(trainee.counters.nonfinite_steps.numpy()),
      "workers": engine.size, "replicas": engine.replicas,
      "coupling_compute_dtype": model.coupling_compute_dtype(),
      "loss_scale": (float(optimizer.loss_scale)
                     if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
                     else None),
  }
  if callbacks.elastic_stats is not None:
    metrics["elastic"] = callbacks.elastic_stats
  metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in metrics.items()}  # strict JSON: no NaN
  metrics_path = os.path.join(run_dir, "metrics.json")
  with open(metrics_path + ".tmp", "w") as f:
    json.dump(metrics, f, indent=1)
  os.replace(metrics_path + ".tmp", metrics_path)
  log(f"done: test bits/dim {test_bpd:.4f} after {step} steps (per-pixel histogram baseline: "
      f"{baseline_bpd:.4f}, {_beats(test_bpd, baseline_bpd)})\n"
      f"  samples:     {os.path.abspath(os.path.dirname(sample_paths[0]))}\n"
      f"  tensorboard: tensorboard --logdir {os.path.abspath(os.path.join(run_dir, 'tensorboard'))}\n"
      f"  metrics:     {os.path.abspath(metrics_path)}\n"
      f"  checkpoints: {os.path.abspath(os.path.join(run_dir, 'checkpoints'))}")


def _beats(test_bpd, baseline_bpd):
  if test_bpd < baseline_bpd:
    return f"better by {baseline_bpd - test_bpd:.4f}"
  return f"WORSE by {test_bpd - baseline_bpd:.4f}: the flow has not learned more than marginals"


def _restore(trainee, prefix, objects):
  """Restores every object of the run. A run saved without float16 loss scaling cannot gain
  it on resume (the model tracks its optimizer, so the missing scale fails the match)."""
  saved = [name for name, _ in tf.train.list_variables(prefix)]
  missing = [name for name in objects if not any(s.startswith(name + "/") for s in saved)]
  if missing:
    raise ValueError(f"--resume: {prefix} was saved by a run that was not elastic (it holds no "
                     f"{missing[0]}); resume it the way it was launched, without "
                     "--host-discovery-script / --min-np")
  if not objects and any(s.startswith("data_position/") for s in saved):
    raise ValueError(f"--resume: {prefix} was saved by an elastic run (its epochs are counted "
                     "in images); resume it with horovodrun --min-np/--max-np/"
                     "--host-discovery-script")
  if (isinstance(trainee.optimizer, tf_keras.mixed_precision.LossScaleOptimizer) and
      not any(name.startswith("optimizer/loss_scale/") for name in saved)):
    raise ValueError(f"--resume: {prefix} was saved without float16 loss scaling; resume it "
                     "with the --mixed-precision it was trained with (none or bfloat16)")
  trainee.restore(prefix, **objects)


def _checkpoint_candidates(checkpoint_dir):
  """Checkpoint prefixes, newest first (from the state file, or the files if it is damaged)."""
  try:
    state = tf.train.get_checkpoint_state(checkpoint_dir)
    if state is not None:
      return list(reversed(state.all_model_checkpoint_paths))
  except (tf.errors.OpError, ValueError):  # a truncated or garbled "checkpoint" file
    pass
  prefixes = [path[:-len(".index")] for path in tf.io.gfile.glob(
      os.path.join(checkpoint_dir, "ckpt-*.index"))]
  return sorted(prefixes, key=lambda p: int(p.rsplit("-", 1)[1]), reverse=True)


def _readable_checkpoint(checkpoint_dir):
  """The newest checkpoint whose every tensor reads back (a run killed while writing, or a
  damaged disk, leaves a bad one); each one skipped is reported. None when there is none."""
  candidates = _checkpoint_candidates(checkpoint_dir)
  for i, prefix in enumerate(candidates):
    try:
      reader = tf.train.load_checkpoint(prefix)
      for name in reader.get_variable_to_dtype_map():
        reader.get_tensor(name)
      return prefix
    except Exception as error:  # pylint: disable=broad-except  # the reader raises many kinds
      reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
      fallback = (f"falling back to {candidates[i + 1]}" if i + 1 < len(candidates) else
                  "no older checkpoint is left")
      print(f"warning: checkpoint {prefix} is unreadable ({reason}); {fallback}",
            file=sys.stderr, flush=True)
  if candidates:
    raise ValueError(f"--resume: no readable checkpoint in {checkpoint_dir} (all "
                     f"{len(candidates)} are damaged); use --overwrite to start over")
  return None


def _write_rank_summary(run_dir, engine, model, history):
  """Every worker records a checksum of its final weights (all must agree) and its losses."""
  values = [np.asarray(v.numpy(), np.float64).ravel() for v in model.trainable_variables]
  flat = np.concatenate(values)
  summary = {"rank": engine.rank, "weights_sum": float(flat.sum()),
             "weights_sum_of_squares": float(np.square(flat).sum()),
             "first_epoch_bits_per_dim": (history.get("bits_per_dim") or [None])[0],
             "last_epoch_bits_per_dim": (history.get("bits_per_dim") or [None])[-1]}
  folder = os.path.join(run_dir, "ranks")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"rank{engine.rank}.json")
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=1)
  os.replace(path + ".tmp", path)


def _evaluate(trainee, test_data):
  result = trainee.evaluate(test_data, return_dict=True, verbose=0)
  return float(result["bits_per_dim"])
