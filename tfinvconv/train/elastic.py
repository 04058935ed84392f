"""Horovod elastic training: the run carries on while workers come and go.

`horovodrun --min-np 1 --max-np N --host-discovery-script ...` starts the trainer with
HOROVOD_ELASTIC=1. The run's state (every variable of the model, optimizer and counters, and the
data position) is committed in host memory every `--commit-every` steps and at each epoch's end.
When a worker is lost, the others roll back to the last commit, Horovod re-forms the job with
the workers left, and training goes on from there; a worker that joins (a new host, or one back
from the blacklist) takes rank 0's state at the next commit.

Data: each epoch is one seeded shuffle of the split, read in global steps of
`batch_size x workers` images from the committed position (`data.epoch_pipeline`). Within an
epoch no image is trained on twice in the committed model, whatever the membership did, and
only the final part smaller than a global step is left out.
"""

import tensorflow as tf
import tf_keras

from tfinvconv.models import horovod_agreement
from tfinvconv.train import callbacks as cb
from tfinvconv.train import distributed
from tfinvconv.train.schedule import WarmupSchedule


class DataPosition(tf.Module):
  """Where an elastic run is in its data: the epoch, and the images its steps took so far in
  that epoch (all workers together). Saved with the checkpoints, so --resume continues there."""

  def __init__(self):
    super().__init__(name="data_position")
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    self.images = tf.Variable(0, dtype=tf.int64, trainable=False, name="images")

  def next_epoch(self):
    self.epoch.assign_add(1)
    self.images.assign(0)


def _state_class():
  from horovod.common.elastic import ObjectState  # pylint: disable=g-import-not-at-top

  class VariablesState(ObjectState):
    """Horovod's elastic state over a list of TF2 variables, plus small Python objects.
    (Horovod's TensorFlowState broadcasts its variables only in TF1 sessions, and KerasState
    misses variables outside `model.variables` and calls tf_keras' `optimizer.variables` as a
    method.)"""

    def __init__(self, hvd, variables, **objects):
      self._hvd, self._variables = hvd, list(variables)
      self._save_variables()
      super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank, **objects)

    def save(self):
      self._save_variables()
      super().save()

    def restore(self):
      for variable, value in zip(self._variables, self._saved):
        variable.assign(value)
      super().restore()

    def sync(self):
      self._hvd.broadcast_variables(self._variables, root_rank=0)
      self._save_variables()
      super().sync()

    def _save_variables(self):
      self._saved = [variable.numpy() for variable in self._variables]

  return VariablesState


def make_state(hvd, guarded, position, **objects):
  """The elastic state of a run: everything `guarded.checkpoint()` saves, and `position`."""
  variables = (guarded.flow.all_variables() + list(guarded.optimizer.variables) +
               list(guarded.counters.variables) + list(position.variables))
  return _state_class()(hvd, variables, **objects)


class Commit(tf_keras.callbacks.Callback):
  """Advances the data position by each step's images and commits the state every `every`
  steps (a lost worker costs at most that many steps). Before the checkpoint callback, so a
  checkpoint holds the position of its step."""

  def __init__(self, state, position, every):
    super().__init__()
    self.state, self.position, self.every = state, position, every
    self.images_per_step = 0
    self.steps_run = 0  # by this worker, rolled back ones included

  def on_train_batch_end(self, batch, logs=None):
    self.steps_run += 1
    self.position.images.assign_add(self.images_per_step)
    if (batch + 1) % self.every == 0:
      self.state.commit()  # raises HostsUpdatedInterrupt when workers are waiting to join


def run_loop(hvd, state, synced, train_epoch, done):
  """Calls `synced()` after each sync of the state, then `train_epoch()` until `done()` (or until
  it returns False), under Horovod's elastic loop: a lost worker restores the last commit, a
  membership change resets Horovod, and the loop syncs rank 0's state and goes on."""
  from horovod.common.exceptions import HorovodInternalError  # pylint: disable=g-import-not-at-top

  @hvd.elastic.run
  def train(state):
    synced()
    while not done():
      try:
        carry_on = train_epoch()
      except tf.errors.OpError as error:
        # Horovod's loop only takes a lost worker for what it is when its own op names are in
        # the error (ours, the worker checks, are not), and it drops any other UnknownError
        # without a word: the run would look finished.
        if distributed.horovod_lost_peer(error):
          raise HorovodInternalError(error) from error
        if isinstance(error, tf.errors.UnknownError):
          raise RuntimeError(f"elastic training failed: {error}") from error
        raise
      if not carry_on:
        return
      state.commit()

  train(state)


class ElasticFit:
  """`fit` one epoch at a time from the committed data position, under Horovod's elastic loop,
  until the planned epochs are done or the run stops. After each sync every worker takes rank
  0's settings (its refusal of the run, its warm-up length, which a worker started at another
  size would compute differently), and the run counts its resets and the steps this worker ran
  again after a rollback."""

  def __init__(self, run, refusal):
    self.run = run
    position = run.checkpoints.position
    self.state = make_state(run.engine.hvd, run.guarded, position, refusal=refusal,
                            warmup_steps=run.schedule.warmup_steps)
    self.state.register_reset_callbacks([self.reset])
    self.commit = Commit(self.state, position, run.config.commit_every)
    averaging, *others = run.callbacks.all
    self.fit_callbacks = [averaging, self.commit, *others]  # position moved before checkpoints
    self.first_step = None  # this worker's, after its first sync
    self.history = {}
    run.callbacks.elastic_stats = {"resets": 0, "steps_redone": 0}

  @property
  def position(self):
    return self.run.checkpoints.position

  def __call__(self):
    run_loop(self.run.engine.hvd, self.state, self.synced, self.train_epoch, self.done)
    ran_forward = cb.step_of(self.run.guarded) - (self.first_step or 0)
    self.run.callbacks.elastic_stats["steps_redone"] = self.commit.steps_run - ran_forward
    return self.history

  def done(self):
    return int(self.position.epoch.numpy()) >= self.run.config.epochs

  def synced(self):
    if self.state.refusal:  # every worker stops
      raise ValueError(self.state.refusal)
    schedule = self.run.schedule
    if self.state.warmup_steps != schedule.warmup_steps:
      optimizer = getattr(self.run.guarded.optimizer, "inner_optimizer", self.run.guarded.optimizer)
      optimizer.learning_rate = WarmupSchedule(schedule.peak, self.state.warmup_steps)
    if self.first_step is None:
      self.first_step = cb.step_of(self.run.guarded)

  def reset(self):
    """Horovod re-formed the job: new rank and size; steps traced again for them."""
    run = self.run
    run.engine.refresh()
    run.data.reshard()
    run.guarded.train_function = run.guarded.test_function = None
    horovod_agreement.restart_first_step(run.guarded.flow)
    run.callbacks.elastic_stats["resets"] += 1
    if run.engine.is_chief and run.config.verbose:
      print(f"\nelastic: {run.engine.size} worker(s) now; going on from step "
            f"{cb.step_of(run.guarded)} (epoch {int(self.position.epoch.numpy()) + 1}, "
            f"{int(self.position.images.numpy())} images in)", flush=True)

  def train_epoch(self):
    """The rest of the epoch; False when the run stopped (signal, non-finite guard)."""
    run = self.run
    stream, steps = run.data.epoch_data(self.position)
    if not steps and not int(self.position.images.numpy()):
      raise ValueError(f"the training split has fewer images than one step of all workers "
                       f"({run.data.global_batch}): lower --batch-size")
    progress = run.callbacks.progress
    self.commit.images_per_step = progress.images_per_step = run.data.global_batch
    progress.steps_per_epoch = steps
    if steps:
      epoch = int(self.position.epoch.numpy())
      cb.extend_history(self.history, run.guarded.fit(
          stream, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps,
          validation_data=run.data.test_data, callbacks=self.fit_callbacks, verbose=0))
    if run.callbacks.stopped:
      return False
    self.position.next_epoch()
    return True
