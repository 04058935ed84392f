"""The training run, from one config: engine, run folder, data, model, restore or initialise,
fit, outputs (model.json first; model.keras, metrics and samples at the end). Its pieces live beside it: config.py, data.py, checkpoints.py, schedule.py,
callbacks.py, elastic.py, outputs.py."""

import contextlib
import os
import signal
import socket
import sys

import tf_keras

from tfinvconv.guarded_training import GuardedTraining
from tfinvconv.models import Glow
from tfinvconv.train import callbacks as cb
from tfinvconv.train import checkpoints as ckpt
from tfinvconv.train import data
from tfinvconv.train import distributed
from tfinvconv.train import elastic
from tfinvconv.train import outputs
from tfinvconv.train.config import POLICIES
from tfinvconv.train.schedule import WarmupSchedule


def run(config):
  """Trains; returns a process exit code (0 done, 3 non-finite stop, 5 reversible backprop's
  rebuild check failed, 128+N on signal N)."""
  config.validate()
  with cb.SignalFlag() as signals, _global_policy(POLICIES[config.mixed_precision]):
    return Run(config, signals).train()


@contextlib.contextmanager
def _global_policy(name):
  """The tf_keras policy while the run builds its model; the caller's one afterwards."""
  before = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(before)


class Run:
  """What one training run has: its config, engine, folder, data, model (`guarded`, whose
  `flow` is the Glow), schedule, checkpoints and callbacks. Set up in this order: the engine
  first, then the folder and data, the model, and the restore or initialisation."""

  def __init__(self, config, signals):
    self.config, self.signals = config, signals
    self.engine = distributed.make_engine(config.strategy or None, config.cpu_replicas,
                                          config.connect_timeout)
    signals.reclaim()
    tf_keras.utils.set_random_seed(config.seed)  # same weights everywhere before any broadcast
    config.check_engine(self.engine)
    self.run_dir, self.refusal = self._claim_folder()
    self.log = print if (self.engine.is_chief and config.verbose) else (lambda *a, **k: None)
    self.data = data.RunData(config, self.engine)
    self.guarded, self.schedule = self._build()
    if self.engine.is_chief and not self.refusal:
      outputs.write_model_config(self.run_dir, self.guarded.flow)
    self.log(f"{self.engine.name}: {self.engine.size} worker(s), {self.engine.replicas} "
             f"replica(s); {self.guarded.flow.count_params():,} parameters; "
             f"{self.data.steps_per_epoch} steps/epoch; run folder "
             f"{os.path.abspath(self.run_dir)}")
    self.checkpoints = ckpt.Checkpoints(self.guarded, self.run_dir, self.engine)
    try:
      self._restore_or_initialise()
    except ValueError as error:  # elastic: said on every worker after the first sync
      if not self.engine.elastic:
        raise
      self.refusal = self.refusal or str(error)
    self.callbacks = cb.RunCallbacks(self)

  def train(self):
    """Fits until done or stopped; returns the exit code."""
    if self.callbacks.rebuild and not self.engine.elastic:  # elastic: no collective before its sync
      self.callbacks.rebuild.check(self.guarded)
    if self.callbacks.failure:
      history = {}
    elif self.engine.elastic:
      history = elastic.ElasticFit(self, self.refusal)()
    else:
      history = self._fit_until_done()
    return self._finish(history)

  def _claim_folder(self):
    """The run folder, claimed by the chief for every worker (they may not see its files), and
    the refusal, if any. An elastic run carries the refusal to every worker in its first state
    sync (a collective now would meet a joining worker out of step); others raise it here."""
    engine, run_dir = self.engine, self.config.folder()
    refusal = engine.broadcast_object(ckpt.claim_run_dir(run_dir, self.config)
                                      if engine.is_chief else None)
    if refusal and not engine.elastic:
      raise ValueError(refusal)
    if engine.is_chief and not refusal:
      os.makedirs(run_dir, exist_ok=True)
    return run_dir, refusal

  def _build(self):
    """The model, wrapped in the guarded step, compiled with the engine's optimizer; and the
    learning-rate schedule."""
    config, engine = self.config, self.engine
    with engine.scope():
      model = Glow((config.image_size, config.image_size, self.data.channels), config.num_levels,
                   config.depth, config.hidden_channels, mixer=config.mixer,
                   kernel_size=config.kernel_size, coupling=config.coupling,
                   n_bits=config.n_bits, n_bins=config.n_bins or None,
                   dequantization=config.dequantization, backprop=config.backprop,
                   implementation=config.implementation,
                   seed=distributed.seed_for(engine, config.seed))
      guarded = GuardedTraining(model)
      peak = config.learning_rate * (engine.replicas if config.scale_lr else 1)
      schedule = WarmupSchedule(peak, config.warmup_epochs * self.data.steps_per_epoch)
      # compile settles the optimizer (under mixed_float16 a LossScaleOptimizer around it): the
      # one the checkpoint holds, with its loss scale.
      guarded.compile(optimizer=engine.wrap_optimizer(tf_keras.optimizers.Adam(schedule)))
      guarded.optimizer.build(model.trainable_variables)  # slots exist: restorable, broadcastable
    return guarded, schedule

  def _restore_or_initialise(self):
    """Rank 0 decides whether to resume (other ranks may not see its files) and the engine
    broadcasts its restored state; a new run initialises ActNorm from data instead. In an elastic
    run every worker reads what it can see (whichever ends up rank 0 may hold the checkpoint) and
    the first state sync broadcasts rank 0's state."""
    config, engine, guarded = self.config, self.engine, self.guarded
    reads = engine.is_chief or engine.elastic
    latest = self.checkpoints.newest_readable() if (config.resume and reads) else None
    latest = engine.broadcast_object(latest)
    if config.resume and latest is None:
      self.log("--resume: no checkpoint yet, starting from scratch")
      if engine.elastic and engine.is_chief:
        print(f"warning: --resume found no checkpoint in {self.checkpoints.directory} on this "
              f"host ({socket.gethostname()}); an elastic run's rank 0 can start on any host, "
              "so keep --run-dir on a folder every host sees", file=sys.stderr, flush=True)
    if latest:
      if os.path.exists(latest + ".index"):
        self.checkpoints.restore(latest)
      engine.broadcast_variables(guarded.flow.variables + guarded.optimizer.variables +
                                 list(guarded.counters.variables))
      self.log(f"resumed from {latest} at step {cb.step_of(guarded)}")
    else:
      guarded.flow.initialize(self.data.init_batch())
      engine.broadcast_variables(guarded.flow.variables)

  def _fit_until_done(self):
    """`fit` until the planned steps are done, a signal stops every worker or the non-finite
    guard gives up. A resumed run first finishes the epoch it stopped in, so it takes exactly
    the steps (and data) of an uninterrupted one."""
    history, plan = {}, self.data
    step = cb.step_of(self.guarded)
    while step < plan.total_steps and not self.guarded.stop_training:
      epoch, done_in_epoch = divmod(step, plan.steps_per_epoch)
      cb.extend_history(history, self.guarded.fit(
          plan.training_data(step), epochs=epoch + 1 if done_in_epoch else self.config.epochs,
          initial_epoch=epoch, steps_per_epoch=plan.steps_per_epoch - done_in_epoch,
          validation_data=plan.test_data, callbacks=self.callbacks.all, verbose=0))
      new_step = cb.step_of(self.guarded)
      if new_step == step or self.callbacks.stopped:
        break
      step = new_step
      if step < plan.total_steps and self.engine.any(self.signals.signum is not None):
        self.callbacks.control.interrupted = self.signals.signum or signal.SIGTERM  # between fits
        self.checkpoints.save(step)
        break
    return history

  def _finish(self, history):
    """Why the run stopped early, or its last checkpoint, test bits/dim and outputs; returns the
    exit code."""
    engine, step = self.engine, cb.step_of(self.guarded)
    if self.callbacks.failure:
      message, code = self.callbacks.failure
      if engine.is_chief:
        print(f"error: {message}", file=sys.stderr, flush=True)
      return code
    if self.callbacks.control.interrupted:
      self.log(f"interrupted by signal {self.callbacks.control.interrupted} at step {step}: "
               "checkpoint saved; continue with --resume")
      return 128 + int(self.callbacks.control.interrupted)
    self.checkpoints.save(step)
    outputs.write_model(self)
    result = self.guarded.evaluate(self.data.test_data, return_dict=True, verbose=0)
    test_bpd = engine.average({"bpd": float(result["bits_per_dim"])})["bpd"]
    self.checkpoints.close()
    outputs.write_rank_summary(self.run_dir, engine.rank, self.guarded.flow, history)
    if engine.is_chief:
      outputs.write_final(self, history, test_bpd)
    return 0

