"""Command line: tfinvconv-train (or python -m tfinvconv.train) [--preset NAME] [--flag ...].

Presets carry the published hyperparameters (tfinvconv/train/presets.py); every value has a
flag. Distributed: `horovodrun -np N tfinvconv-train ...` (Horovod), or `--strategy mirrored` /
`--strategy multiworker` (tf.distribute, workers described by TF_CONFIG).
"""

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfinvconv.train import presets  # pylint: disable=g-import-not-at-top,wrong-import-position

HELP = {
    "dataset": "digits, photo_patches (crops of scikit-learn's two photos), a TFDS name "
               "(cifar10, downsampled_imagenet/32x32, celeb_a_hq/256, ...) or a folder of images",
    "data_dir": "TFDS data folder (datasets are never downloaded)",
    "run_dir": "where checkpoints, samples, TensorBoard logs, metrics.json and the model "
               "(model.json, model.keras) go",
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
    "backprop": "how the backward pass finds activations: stored (all kept), checkpointed "
                "(each step recomputed from its input) or reversible (each step's input "
                "rebuilt from its output; memory flat in depth, checked every epoch)",
    "n_bits": "bits per colour the data is reduced to (as in the papers)",
    "n_bins": "grey levels per colour instead of 2**n_bits (e.g. 17 for the digits' 17 "
              "levels, so that no bin is empty); 0: 2**n_bits",
    "connect_timeout": "--strategy multiworker: seconds to wait for every worker of TF_CONFIG "
                       "to join before giving up with an error (default 300)",
    "cpu_replicas": "--strategy mirrored on a machine without GPUs: split the CPU into this "
                    "many logical devices, one replica each",
    "overwrite": "start over in a --run-dir that holds another run (deletes its checkpoints, "
                 "samples, TensorBoard logs, metrics and model files)",
}


def parse(argv):
  from tfinvconv.train.config import CHOICES  # pylint: disable=g-import-not-at-top
  from tfinvconv.train.config import Config  # pylint: disable=g-import-not-at-top
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
  from tfinvconv.train import cluster  # pylint: disable=g-import-not-at-top
  from tfinvconv.train import distributed  # pylint: disable=g-import-not-at-top
  from tfinvconv.train import exits  # pylint: disable=g-import-not-at-top
  from tfinvconv.train import trainer  # pylint: disable=g-import-not-at-top
  try:
    return trainer.run(config)  # validates the configuration first
  except ValueError as error:  # bad data or configuration (MissingDatasetError too): say what
    print(f"error: {error}", file=sys.stderr)
    return exits.EXIT_USAGE
  except (tf.errors.UnavailableError, tf.errors.AbortedError,
          tf.errors.DeadlineExceededError) as error:  # a peer died (tf.distribute)
    message = cluster.lost_contact_message(error, config.folder())
  except tf.errors.OpError as error:
    if not distributed.horovod_lost_peer(error):
      raise
    message = distributed.horovod_lost_message(config.folder())
  # The collectives are broken now: interpreter teardown could hang or print noise.
  exits.exit_now(f"error: {message}", exits.EXIT_LOST_WORKER)


if __name__ == "__main__":
  sys.exit(main())
