"""tf_keras callbacks of the training system: metric averaging, run control (checkpoints,
SIGTERM/SIGINT), the stop after repeated non-finite steps, progress, TensorBoard and sample
grids. The model they see is a `tfinvconv.guarded_training.GuardedTraining` (its `flow` is the
Glow)."""

import os
import signal
import time

import numpy as np
import tensorflow as tf
import tf_keras

from tfinvconv.models import backprop_modes
from tfinvconv.train import exits

TEMPERATURES = (0.0, 0.5, 0.7, 1.0)


class AverageMetrics(tf_keras.callbacks.Callback):
  """Replaces each epoch's logs by their average over workers (first in the list, so every
  later callback sees global numbers). Horovod's own MetricAverageCallback imports Keras 3 and
  fails on TF >= 2.16 (docs/multi_gpu.md)."""

  def __init__(self, engine):
    super().__init__()
    self.engine = engine

  def on_epoch_end(self, epoch, logs=None):
    if logs:
      logs.update(self.engine.average(logs))


class SignalFlag:
  """Records SIGTERM/SIGINT for the whole run (a `with` block) instead of dying at once, so
  the run can save a checkpoint at the next step boundary. A second signal exits at once
  (128 + its number) without saving: the last checkpoint on disk stays as it was."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._record)
    return self

  def reclaim(self):
    """Takes SIGTERM/SIGINT back after a library installed its own handler: creating a
    MultiWorkerMirroredStrategy installs TensorFlow's preemption notifier, which swallows SIGTERM
    (the worker would neither stop nor save; seen with TF 2.21)."""
    for signum in self._previous:
      signal.signal(signum, self._record)

  def _record(self, signum, frame):  # pylint: disable=unused-argument
    if self.signum is not None:
      exits.exit_now(f"second signal ({signal.Signals(signum).name}): exiting now without "
                     "saving; the last checkpoint is intact", 128 + signum, flush_stdout=False)
    self.signum = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()


def step_of(guarded):
  """Steps taken by a `tfinvconv.guarded_training.GuardedTraining`."""
  return int(guarded.counters.step_counter.numpy())


class RunControl(tf_keras.callbacks.Callback):
  """Checkpoints every `every` steps; on SIGTERM/SIGINT (seen by any worker) saves and stops
  every worker at the same step. In an elastic run a signal stops only the workers that got it
  (their hosts are being taken away, as with spot instances): they leave the job at once and
  the others go on from their last commit; a signal on every worker stops the run."""

  def __init__(self, engine, save, every, signals):
    super().__init__()
    self.engine, self.save, self.every, self.signals = engine, save, every, signals
    self.interrupted = None     # the signal we stopped for

  def on_train_batch_end(self, batch, logs=None):
    if self.model.stop_training:  # another callback stopped the run
      return
    step = step_of(self.model)
    if self._every_worker_stops():  # all workers stop at this step
      self.interrupted = self.signals.signum or signal.SIGTERM
      self.save(step)
      self.model.stop_training = True
    elif self.every and step % self.every == 0:
      self.save(step)

  def _every_worker_stops(self):
    """Whether every worker stops for a signal at this step (a collective); in an elastic run a
    worker signalled while others are not leaves here instead."""
    signalled = self.signals.signum is not None
    if not self.engine.elastic:
      return self.engine.any(signalled)
    count = self.engine.count(signalled)
    if signalled and count < self.engine.size:
      signum = self.signals.signum
      exits.exit_now(f"{signal.Signals(signum).name}: this worker leaves the elastic job; the "
                     "others go on from their last commit", 128 + signum)
    return count == self.engine.size


class NonFiniteStop(tf_keras.callbacks.Callback):
  """Stops (without saving) after `max_consecutive` consecutive steps that the guarded step
  skipped as non-finite; `failure` then says why."""

  def __init__(self, max_consecutive):
    super().__init__()
    self.max_consecutive = max_consecutive
    self.failure = None
    self._consecutive = 0
    self._last = None

  def on_train_begin(self, logs=None):
    self._last = int(self.model.counters.nonfinite_steps.numpy())

  def on_train_batch_end(self, batch, logs=None):
    skipped = int(self.model.counters.nonfinite_steps.numpy())
    self._consecutive = self._consecutive + 1 if skipped > self._last else 0
    self._last = skipped
    if self._consecutive >= self.max_consecutive:
      self.failure = (f"stopped at step {step_of(self.model)}: {self._consecutive} consecutive "
                      f"steps had a non-finite loss or gradient ({skipped} skipped in all); "
                      "the last checkpoint is intact - lower --learning-rate or check the data")
      self.model.stop_training = True


class RebuildCheck(tf_keras.callbacks.Callback):
  """Under --backprop reversible: after every epoch (and, through `check`, before training), how
  far the backward pass's rebuilt inputs are from the true ones on a fixed batch
  (`Glow.rebuild_errors`). The worst is reported; above `tolerance` on any worker the run stops
  (without saving) before it trains on gradients that far off, and `failure` says why."""

  def __init__(self, engine, images, show=True):
    super().__init__()
    self.engine, self.images, self.show = engine, images, show
    self.tolerance = backprop_modes.REBUILD_TOLERANCE
    self.failure = None

  def on_epoch_end(self, epoch, logs=None):
    self.check(self.model)

  def check(self, guarded):
    """Every worker must call it (a collective). Keras' stop_training set in on_train_begin
    would still let one step run, so the trainer calls this before fit instead."""
    level, step, error = max(guarded.flow.rebuild_errors(self.images), key=lambda e: e[2])
    if self.show:
      print(f"  reversible backprop: worst rebuilt step input off by {error:.1e} (relative; "
            f"level {level}, step {step})", flush=True)
    if self.engine.any(not error <= self.tolerance):  # NaN fails too
      self.failure = (f"stopped at step {step_of(guarded)}: reversible backprop rebuilds "
                      f"the input of flow step {step} of level {level} with a relative error "
                      f"of {error:.1e} (tolerance {self.tolerance:.0e}) on some worker, so its "
                      "gradients would be wrong. Continue with --resume --backprop "
                      "checkpointed (same gradients as stored, less memory) or lower "
                      "--learning-rate")
      guarded.stop_training = True


class Progress(tf_keras.callbacks.Callback):
  """A progress bar with bits/dim and images/s; keeps the step times for metrics.json."""

  def __init__(self, steps_per_epoch, epochs, images_per_step, show=True):
    super().__init__()
    self.steps_per_epoch, self.epochs, self.images_per_step = (steps_per_epoch, epochs,
                                                               images_per_step)
    self.show = show
    self.step_times = []
    self._bar = None

  def on_epoch_begin(self, epoch, logs=None):
    if self.show:
      print(f"epoch {epoch + 1}/{self.epochs}", flush=True)
    self._bar = tf_keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["images/s"],
                                       verbose=1 if self.show else 0)
    self._epoch_start = self._batch_start = time.perf_counter()
    self._images = 0

  def on_train_batch_begin(self, batch, logs=None):
    self._batch_start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    now = time.perf_counter()
    self.step_times.append(now - self._batch_start)
    self._images += self.images_per_step
    rate = self._images / max(now - self._epoch_start, 1e-9)
    self._bar.update(min(batch + 1, self.steps_per_epoch),
                     [("bits/dim", float(logs["bits_per_dim"])), ("images/s", rate)])

  def on_epoch_end(self, epoch, logs=None):
    if self.show and logs and "val_bits_per_dim" in logs:
      print(f"  test bits/dim {logs['val_bits_per_dim']:.4f}", flush=True)

  @property
  def images_per_second(self):
    times = self.step_times[1:] or self.step_times  # the first step includes tracing
    return self.images_per_step / float(np.median(times)) if times else float("nan")


def sample_grid(flow, n, temperature, seed):
  """n samples of `flow` as one grid image, small images enlarged to about 32 pixels a side."""
  x = flow.sample(n, temperature=temperature, seed=seed)
  return image_grid(flow.to_images(x).numpy(), max(1, 32 // flow.image_shape[0]))


def image_grid(images, scale=1, gap=2):
  """[N, H, W, C] uint8 -> one grid image, cells `scale`-times enlarged and `gap` pixels
  apart on a mid-grey background (so neighbouring samples do not run into each other)."""
  images = np.asarray(images)
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = images.shape
  cols = int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, c), 128, np.uint8)
  for index, image in enumerate(images):
    r, col = divmod(index, cols)
    top, left = gap + r * (h + gap), gap + col * (w + gap)
    grid[top:top + h, left:left + w] = image
  return grid


def write_png(path, grid):
  tmp = path + ".tmp"
  tf.io.write_file(tmp, tf.io.encode_png(grid))
  os.replace(tmp, path)


class Report(tf_keras.callbacks.Callback):
  """Rank 0 only: TensorBoard scalars (train/test bits/dim, lr) and sample grids at several
  temperatures, also written as PNG files in the run folder."""

  def __init__(self, run_dir, num_samples=64, seed=0):
    super().__init__()
    self.run_dir, self.num_samples, self.seed = run_dir, num_samples, seed
    self._writer = None

  @property
  def writer(self):
    """Created at first use: nothing is written into the run folder before training starts."""
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(os.path.join(self.run_dir, "tensorboard"))
    return self._writer

  def samples(self, tag):
    """Writes one grid per temperature; returns the PNG paths."""
    os.makedirs(os.path.join(self.run_dir, "samples"), exist_ok=True)
    paths = []
    for temperature in TEMPERATURES:
      grid = sample_grid(self.model.flow, self.num_samples, temperature, self.seed)
      path = os.path.join(self.run_dir, "samples", f"{tag}_t{temperature:.1f}.png")
      write_png(path, grid)
      with self.writer.as_default():
        tf.summary.image(f"samples/temperature_{temperature:.1f}", grid[None],
                         step=step_of(self.model))
      paths.append(path)
    return paths

  def on_epoch_end(self, epoch, logs=None):
    step = step_of(self.model)
    learning_rate = self.model.optimizer.learning_rate
    if callable(learning_rate):
      learning_rate = learning_rate(self.model.optimizer.iterations)
    with self.writer.as_default():
      if logs and "bits_per_dim" in logs:
        tf.summary.scalar("train/bits_per_dim", logs["bits_per_dim"], step=step)
      if logs and "val_bits_per_dim" in logs:
        tf.summary.scalar("test/bits_per_dim", logs["val_bits_per_dim"], step=step)
      tf.summary.scalar("learning_rate", float(tf.convert_to_tensor(learning_rate)), step=step)
    self.samples(f"epoch_{epoch + 1:04d}")
    self.writer.flush()


def extend_history(history, result):
  """Appends a `fit` call's History to the run's `history` dict of lists."""
  for key, values in result.history.items():
    history.setdefault(key, []).extend(values)


class RunCallbacks:
  """The callbacks of a run's `fit`, in order: metric averaging first (every later one sees
  global numbers), then the non-finite guard, checkpoints and signals, progress, and the chief's
  report (TensorBoard and samples)."""

  def __init__(self, run):
    config, engine, plan = run.config, run.engine, run.data
    self.control = RunControl(engine, run.checkpoints.save, config.checkpoint_every, run.signals)
    self.guard = NonFiniteStop(config.max_nonfinite)
    self.progress = Progress(plan.steps_per_epoch, config.epochs, plan.global_batch,
                             show=engine.is_chief and config.verbose)
    self.report = (Report(run.run_dir, config.num_samples, seed=config.seed) if engine.is_chief
                   else None)
    self.all = [AverageMetrics(engine), self.guard, self.control, self.progress]
    self.rebuild = None
    if config.backprop == "reversible":
      self.rebuild = RebuildCheck(engine, plan.init_batch(),
                                  show=engine.is_chief and config.verbose)
      self.all.insert(2, self.rebuild)  # before checkpoints: a failed check saves nothing
    self.elastic_stats = None  # an elastic run's resets and steps re-done
    if self.report:
      self.all.append(self.report)

  @property
  def stopped(self):
    return bool(self.control.interrupted or self.failure)

  @property
  def failure(self):
    """Why a numerical check stopped the run, and its exit code; None when none did."""
    if self.guard.failure:
      return self.guard.failure, exits.EXIT_NONFINITE
    if self.rebuild and self.rebuild.failure:
      return self.rebuild.failure, exits.EXIT_REBUILD
    return None
