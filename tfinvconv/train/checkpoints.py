"""A run's checkpoints: the run folder's claim, writing them, and finding and restoring the
newest one that reads back."""

import os
import shutil
import sys
import tempfile

import tensorflow as tf
import tf_keras

from tfinvconv.train import elastic
from tfinvconv.train import outputs

# What a run writes into its folder; --overwrite removes exactly these.
RUN_OUTPUTS = ("checkpoints", "samples", "tensorboard", "ranks", "metrics.json",
               outputs.MODEL_CONFIG, outputs.MODEL_FILE)


def claim_run_dir(run_dir, config):
  """A folder holding another run's checkpoints is only continued (--resume) or cleared
  (--overwrite), never mixed with a new run. Returns the refusal message, or None."""
  checkpoints = os.path.join(run_dir, "checkpoints")
  if config.resume or not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
    return None
  if not config.overwrite:
    return (f"run folder {run_dir} already holds checkpoints of a run: pass --resume to "
            "continue it, --overwrite to start over there (its checkpoints, samples, "
            "TensorBoard logs, metrics and model files are deleted), or a new --run-dir")
  for name in RUN_OUTPUTS:
    path = os.path.join(run_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  return None


class Checkpoints:
  """Rank 0 writes checkpoints; other multi-worker replicas must join each save, into scratch.
  An elastic run's checkpoints hold its data position too, and are written by whichever worker
  is rank 0 at the time."""

  def __init__(self, guarded, run_dir, engine):
    self.guarded, self.engine = guarded, engine
    self.directory = os.path.join(run_dir, "checkpoints")
    self.position = elastic.DataPosition() if engine.elastic else None
    self.objects = {"data_position": self.position} if engine.elastic else {}
    self.scratch = None
    if engine.saves_on_every_worker and not engine.is_chief:
      self.scratch = tempfile.mkdtemp(prefix="tfinvconv-worker-")
    self.manager = None

  def save(self, step):
    if self.manager is None and (self.engine.is_chief or self.scratch):
      self.manager = tf.train.CheckpointManager(self.guarded.checkpoint(**self.objects),
                                                self.scratch or self.directory, max_to_keep=3)
    if self.manager is not None:  # CheckpointManager writes the index last, atomically
      self.manager.save(checkpoint_number=step)

  def newest_readable(self):
    return readable_checkpoint(self.directory)

  def restore(self, prefix):
    """Restores every object of the run. A run saved without float16 loss scaling cannot gain
    it on resume (the model tracks its optimizer, so the missing scale fails the match)."""
    saved = [name for name, _ in tf.train.list_variables(prefix)]
    missing = [name for name in self.objects
               if not any(s.startswith(name + "/") for s in saved)]
    if missing:
      raise ValueError(f"--resume: {prefix} was saved by a run that was not elastic (it holds "
                       f"no {missing[0]}); resume it the way it was launched, without "
                       "--host-discovery-script / --min-np")
    if not self.objects and any(s.startswith("data_position/") for s in saved):
      raise ValueError(f"--resume: {prefix} was saved by an elastic run (its epochs are counted "
                       "in images); resume it with horovodrun --min-np/--max-np/"
                       "--host-discovery-script")
    if (isinstance(self.guarded.optimizer, tf_keras.mixed_precision.LossScaleOptimizer) and
        not any(name.startswith("optimizer/loss_scale/") for name in saved)):
      raise ValueError(f"--resume: {prefix} was saved without float16 loss scaling; resume it "
                       "with the --mixed-precision it was trained with (none or bfloat16)")
    self.guarded.restore(prefix, **self.objects)

  def close(self):
    if self.scratch:
      shutil.rmtree(self.scratch, ignore_errors=True)


def checkpoint_candidates(checkpoint_dir):
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


def readable_checkpoint(checkpoint_dir):
  """The newest checkpoint whose every tensor reads back (a run killed while writing, or a
  damaged disk, leaves a bad one); each one skipped is reported. None when there is none."""
  candidates = checkpoint_candidates(checkpoint_dir)
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
