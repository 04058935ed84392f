"""Command line: tfinvconv-train (or python -m tfinvconv.train) [--preset NAME] [--flag ...].

Presets carry the published hyperparameters (tfinvconv/train/presets.py); every value has a
flag. Distributed: `horovodrun -np N tfinvconv-train ...` (Horovod), or `--strategy mirrored` /
`--strategy multiworker` (tf.distribute, workers described by TF_CONFIG).
"""

import argparse
import dataclasses
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfinvconv.train import presets  # pylint: disable=g-import-not-at-top,wrong-import-position

HELP = {
    "dataset": "digits, photo_patches (crops of scikit-learn's two photos), a TFDS name "
               "(cifar10, downsampled_imagenet/32x32, celeb_a_hq/256, ...) or a folder of images",
    "data_dir": "TFDS data folder (datasets are never downloaded)",
    "run_dir": "where checkpoints, samples, TensorBoard logs and metrics.json go",
    "resume": "continue from the last checkpoint in --run-dir",
    "strategy": "tf.distribute engine: mirrored or multiworker (Horovod: launch with "
                "horovodrun instead)",
    "mixer": "1x1, nxn, inverse_conv, finc or emerging",
    "implementation": "inverse convolution kernels: auto, custom_op or tf",
    "mixed_precision": "coupling networks in bfloat16 or float16 (with loss scaling); "
                       "variables, log-dets, invertible convolutions, actnorm and priors stay "
                       "float32",
    "batch_size": "images per replica (GPU / process) per step",
    "learning_rate": "peak learning rate after warm-up (times the number of replicas with "
                     "--scale-lr)",
    "scale_lr": "multiply the learning rate by the number of replicas (Horovod's convention; "
                "off by default, as openai/glow trained with 1e-3 on 8 GPUs)",
    "checkpoint_every": "steps between checkpoints",
    "commit_every": "Horovod elastic (horovodrun --min-np/--max-np/--host-discovery-script): "
                    "steps between in-memory commits of the run's state; a lost worker costs "
                    "the others at most this many steps",
    "max_nonfinite": "consecutive non-finite steps before the run stops",
    "steps_per_epoch": "0: one pass over the training set",
    "dequantization": "noise inside the bins: uniform, or variational (a small conditional "
                      "flow q(u | x) trained with the model; bits/dim stays an upper bound)",
    "n_bits": "bits per colour the data is reduced to (as in the papers)",
    "n_bins": "grey levels per colour instead of 2**n_bits (e.g. 17 for the digits' 17 "
              "levels, so that no bin is empty); 0: 2**n_bits",
    "connect_timeout": "--strategy multiworker: seconds to wait for every worker of TF_CONFIG "
                       "to join before giving up with an error (default 300)",
    "cpu_replicas": "--strategy mirrored on a machine without GPUs: split the CPU into this "
                    "many logical devices, one replica each",
    "overwrite": "start over in a --run-dir that holds another run (deletes its checkpoints, "
                 "samples, TensorBoard logs and metrics)",
}


CHOICES = {
    "mixer": ("1x1", "nxn", "inverse_conv", "finc", "emerging"),
    "coupling": ("affine", "additive"),
    "dequantization": ("uniform", "variational"),
    "strategy": ("", "mirrored", "multiworker"),
    "implementation": ("auto", "custom_op", "tf"),
    "mixed_precision": ("none", "bfloat16", "float16"),
}


def parse(argv):
  from tfinvconv.train.trainer import Config  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="tfinvconv-train", description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default=None, choices=sorted(presets.PRESETS),
                      help="default: the preset made for --dataset (digits without one; "
                           "`images` for a folder or another dataset)")
  for field in dataclasses.fields(Config):
    flag = "--" + field.name.replace("_", "-")
    if field.type == "bool" or isinstance(field.default, bool):
      parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                          help=HELP.get(field.name))
    else:
      parser.add_argument(flag, type=type(field.default), default=None,
                          choices=CHOICES.get(field.name),
                          help=HELP.get(field.name, f"default from the preset or "
                                                    f"{field.default!r}"))
  args = parser.parse_args(argv)
  if args.preset is None:
    args.preset = presets.preset_for(args.dataset)
    if args.dataset is not None:  # say what it inherits, so that nothing is silent
      print(f"--dataset {args.dataset} without --preset: using preset {args.preset!r} "
            f"({presets.describe(args.preset)}); every value has a flag")
  if not presets.PRESETS[args.preset]["dataset"] and args.dataset is None:
    parser.error(f"--preset {args.preset} needs --dataset (a folder of images or a TFDS name)")
  values = {k: v for k, v in presets.PRESETS[args.preset].items() if v is not None and v != ""}
  values.update({k: v for k, v in vars(args).items() if k != "preset" and v is not None})
  if args.n_bits is not None and args.n_bins is None:
    values["n_bins"] = 0  # --n-bits alone replaces a preset's n_bins
  return Config(**values)


def main(argv=None):
  config = parse(sys.argv[1:] if argv is None else argv)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfinvconv.train import distributed  # pylint: disable=g-import-not-at-top
  from tfinvconv.train import trainer  # pylint: disable=g-import-not-at-top
  try:
    return trainer.run(config)  # validates the configuration first
  except ValueError as error:  # bad data or configuration (MissingDatasetError too): say what
    print(f"error: {error}", file=sys.stderr)
    return 2
  except (tf.errors.UnavailableError, tf.errors.AbortedError,
          tf.errors.DeadlineExceededError) as error:  # a peer died (tf.distribute)
    _leave_lost(lost_contact_message(error, config.folder()), trainer.EXIT_LOST_WORKER)
  except tf.errors.OpError as error:
    if not distributed.horovod_lost_peer(error):
      raise
    _leave_lost(horovod_lost_message(config.folder()), trainer.EXIT_LOST_WORKER)


def _leave_lost(message, status):
  """Says `message` and exits at once: the collectives are broken now, and interpreter
  teardown can hang or print noise."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(status)  # pylint: disable=protected-access


def horovod_lost_message(run_folder):
  return ("Horovod shut down mid-run: another rank ended or this one can no longer reach it "
          "(Gloo gives up after HOROVOD_GLOO_TIMEOUT_SECONDS, 30 s by default; horovodrun names "
          "the rank that ended). The last checkpoint, on the disk of rank 0, which writes it, is "
          f"intact ({os.path.join(run_folder, 'checkpoints')} there): restart every rank with "
          "--resume")


def lost_contact_message(error, run_folder, tf_config=None):
  """What a worker says when a collective or the coordination service fails: which task was
  lost, where the last checkpoint is, and to restart every worker with --resume."""
  task = _cluster_task(tf_config)
  lost = _lost_task(str(error))
  others = [t for t in _cluster_tasks(tf_config) if t != task]
  if task is not None and (lost == task or not isinstance(lost, tuple)):
    # TF's text names this task when it lost the coordination leader, or no task at all.
    lost = others[0] if len(others) == 1 else _leader(tf_config) if lost == task else lost
  if task is None or task == _leader(tf_config):
    where = f"in {os.path.join(run_folder, 'checkpoints')}"
  else:  # only the leader writes checkpoints: on another host they are not on this disk
    where = f"on the disk of {_describe(_leader(tf_config))}, which writes them,"
  return (f"lost contact with {_describe(lost) if isinstance(lost, tuple) else lost}; the last "
          f"checkpoint {where} is intact: restart every worker with --resume")


def _tf_config(tf_config=None):
  """TF_CONFIG (or the text given) as a dict; {} outside a TF_CONFIG cluster."""
  try:
    config = json.loads(tf_config if tf_config is not None else os.environ.get("TF_CONFIG", ""))
  except ValueError:
    return {}
  return config if isinstance(config, dict) else {}


def _cluster_task(tf_config=None):
  """(job, index) of this process, or None outside a TF_CONFIG cluster."""
  task = _tf_config(tf_config).get("task", {})
  try:
    return task["type"], int(task["index"])
  except (KeyError, TypeError, ValueError):
    return None


def _cluster_tasks(tf_config=None):
  """Every (job, index) of the TF_CONFIG cluster (chief and workers), or []."""
  cluster = _tf_config(tf_config).get("cluster", {})
  return [(job, i) for job in ("chief", "worker") for i in range(len(cluster.get(job, [])))]


def _leader(tf_config=None):
  """The task that runs TF's coordination service (and writes checkpoints): the chief if the
  cluster has one, else worker 0."""
  return ("chief", 0) if ("chief", 0) in _cluster_tasks(tf_config) else ("worker", 0)


def _describe(task):
  return f"{task[0]} {task[1]} (/job:{task[0]}/replica:0/task:{task[1]})"


def _lost_task(text):
  """(job, index) of the task TF's error text lists as unhealthy (or the first it names), or
  what the error says."""
  unhealthy = text.find("unhealthy")
  task = r"/job:(\w+)/replica:\d+/task:(\d+)"
  match = (re.search(task, text[unhealthy:]) if unhealthy >= 0 else None) or re.search(task, text)
  if match:
    return match.group(1), int(match.group(2))
  return "another worker (" + (text.strip().splitlines() or ["no details"])[0][:200] + ")"


if __name__ == "__main__":
  sys.exit(main())
