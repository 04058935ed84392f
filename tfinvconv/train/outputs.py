"""What a run leaves in its folder: model.json (the model's configuration, written first, so that
any checkpoint can be rebuilt) and, once finished, model.keras, metrics.json beside the per-pixel
baseline, the final samples, and each worker's weight checksum."""

import json
import math
import os
import shutil
import tempfile

import numpy as np
import tf_keras

from tfinvconv.train import baseline
from tfinvconv.train import callbacks as cb


def write_json(path, value):
  """Writes `value` as JSON, atomically (a reader never sees half a file)."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1)
  os.replace(path + ".tmp", path)


MODEL_CONFIG = "model.json"
MODEL_FILE = "model.keras"


def write_model_config(run_dir, flow):
  """model.json: the Glow's full configuration (its get_config(), every constructor argument),
  which rebuilds the model of any checkpoint in the folder (tfinvconv-sample does)."""
  write_json(os.path.join(run_dir, MODEL_CONFIG), {"glow": flow.get_config()})


def read_model_config(run_dir):
  with open(os.path.join(run_dir, MODEL_CONFIG)) as f:
    return json.load(f)["glow"]


def write_model(run):
  """model.keras, the trained flow in one file (`tf_keras.models.load_model(path)` after `import
  tfinvconv`), written atomically: saved under another name, then renamed. Every replica of a
  multi-worker strategy saves, as TF's guide asks; only the chief's file is kept."""
  engine = run.engine
  if not (engine.is_chief or engine.saves_on_every_worker):
    return
  folder = run.run_dir if engine.is_chief else tempfile.mkdtemp(prefix="tfinvconv-worker-")
  partial = os.path.join(folder, ".partial-" + MODEL_FILE)  # Keras wants the .keras suffix
  run.guarded.flow.save(partial)
  if engine.is_chief:
    os.replace(partial, os.path.join(run.run_dir, MODEL_FILE))
  else:
    shutil.rmtree(folder, ignore_errors=True)


def write_final(run, history, test_bpd):
  """The chief's outputs: final samples, metrics.json beside the per-pixel baseline; says where
  they are."""
  report = run.callbacks.report
  if report is None:  # an elastic run whose rank 0 changed hosts
    report = cb.Report(run.run_dir, run.config.num_samples, seed=run.config.seed)
    report.set_model(run.guarded)
  sample_paths = report.samples("final")
  metrics, baseline_bpd = _metrics(run, history, test_bpd)
  metrics_path = os.path.join(run.run_dir, "metrics.json")
  write_json(metrics_path, metrics)
  run.log(f"done: test bits/dim {test_bpd:.4f} after {metrics['steps']} steps (per-pixel "
          f"histogram baseline: {baseline_bpd:.4f}, {_beats(test_bpd, baseline_bpd)})\n"
          f"  samples:     {os.path.abspath(os.path.dirname(sample_paths[0]))}\n"
          f"  tensorboard: tensorboard --logdir "
          f"{os.path.abspath(os.path.join(run.run_dir, 'tensorboard'))}\n"
          f"  metrics:     {os.path.abspath(metrics_path)}\n"
          f"  model:       {os.path.abspath(os.path.join(run.run_dir, MODEL_FILE))}\n"
          f"  checkpoints: {os.path.abspath(os.path.join(run.run_dir, 'checkpoints'))}\n"
          f"  more samples: tfinvconv-sample --run-dir {run.run_dir} --temperature 0.7 "
          "samples.png")


def _metrics(run, history, test_bpd):
  """metrics.json's contents (strict JSON: None for what is not finite), and the baseline's
  bits/dim."""
  model, optimizer, progress = run.guarded.flow, run.guarded.optimizer, run.callbacks.progress
  baseline_bpd, baseline_train, baseline_test = baseline.source_bits_per_dim(
      run.data.train_images, run.data.test_images, model.n_bins)
  metrics = {
      "preset_dataset": run.config.dataset, "mixer": run.config.mixer,
      "model": model.get_config(),
      "steps": cb.step_of(run.guarded),
      "train_bits_per_dim": (history.get("bits_per_dim") or [float("nan")])[-1],
      "test_bits_per_dim": test_bpd, "n_bins": model.n_bins,
      "baseline_bits_per_dim": baseline_bpd,
      "baseline": f"per-pixel histogram of {baseline_train} training images, evaluated on "
                  f"{baseline_test} test images (tfinvconv/train/baseline.py)",
      "params": int(model.count_params()),
      "step_time_ms": 1e3 * float(np.median(progress.step_times[1:] or [float("nan")])),
      "images_per_sec": progress.images_per_second,
      "nonfinite_steps": int(run.guarded.counters.nonfinite_steps.numpy()),
      "workers": run.engine.size, "replicas": run.engine.replicas,
      "coupling_compute_dtype": model.coupling_compute_dtype(),
      "loss_scale": (float(optimizer.loss_scale)
                     if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
                     else None),
  }
  if run.callbacks.elastic_stats is not None:
    metrics["elastic"] = run.callbacks.elastic_stats
  return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
          for k, v in metrics.items()}, baseline_bpd


def _beats(test_bpd, baseline_bpd):
  if test_bpd < baseline_bpd:
    return f"better by {baseline_bpd - test_bpd:.4f}"
  return f"WORSE by {test_bpd - baseline_bpd:.4f}: the flow has not learned more than marginals"


def write_rank_summary(run_dir, rank, model, history):
  """Every worker records a checksum of its final weights (all must agree) and its losses."""
  values = [np.asarray(v.numpy(), np.float64).ravel() for v in model.trainable_variables]
  flat = np.concatenate(values)
  summary = {"rank": rank, "weights_sum": float(flat.sum()),
             "weights_sum_of_squares": float(np.square(flat).sum()),
             "first_epoch_bits_per_dim": (history.get("bits_per_dim") or [None])[0],
             "last_epoch_bits_per_dim": (history.get("bits_per_dim") or [None])[-1]}
  folder = os.path.join(run_dir, "ranks")
  os.makedirs(folder, exist_ok=True)
  write_json(os.path.join(folder, f"rank{rank}.json"), summary)
