"""Command line: tfinvconv-sample (or python -m tfinvconv.sample) --run-dir DIR [--n 64]
[--temperature 0.7] [--seed 1] OUT.png

Draws a grid of samples from a run of tfinvconv-train, finished or interrupted: the model is
rebuilt from the folder's model.json and given the weights of its newest readable checkpoint.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse(argv):
  parser = argparse.ArgumentParser(prog="tfinvconv-sample", description=__doc__.split("\n")[0])
  parser.add_argument("--run-dir", required=True, help="the folder tfinvconv-train wrote")
  parser.add_argument("--n", type=int, default=64, help="how many samples (default 64)")
  parser.add_argument("--temperature", type=float, default=0.7,
                      help="scale of the prior's standard deviation (default 0.7)")
  parser.add_argument("--seed", type=int, default=1, help="the same seed draws the same grid")
  parser.add_argument("output", help="the PNG file to write")
  args = parser.parse_args(argv)
  if args.n < 1:
    parser.error(f"--n must be at least 1, not {args.n}")
  if not args.temperature >= 0:
    parser.error(f"--temperature must be 0 or more, not {args.temperature}")
  if not args.output.lower().endswith(".png"):
    parser.error(f"the output is written as PNG: name it *.png, not {args.output}")
  if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
    parser.error(f"no folder for {args.output}")
  return args


def load_flow(run_dir):
  """The run's Glow with the weights of its newest readable checkpoint, and that checkpoint's
  path. Raises ValueError, naming the problem, when the folder cannot give one."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfinvconv.models import Glow  # pylint: disable=g-import-not-at-top
  from tfinvconv.train import checkpoints  # pylint: disable=g-import-not-at-top
  from tfinvconv.train import outputs  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(run_dir):
    raise ValueError(f"no run folder {run_dir}")
  try:
    config = outputs.read_model_config(run_dir)
  except FileNotFoundError:
    raise ValueError(f"{run_dir} has no {outputs.MODEL_CONFIG} (tfinvconv-train writes it when "
                     "a run starts; a folder from an older version can be sampled after "
                     "tfinvconv.models.Glow(...) is rebuilt by hand)") from None
  except (ValueError, KeyError) as error:
    raise ValueError(f"{os.path.join(run_dir, outputs.MODEL_CONFIG)} is damaged ({error})") from None
  prefix = checkpoints.readable_checkpoint(os.path.join(run_dir, "checkpoints"))
  if prefix is None:
    raise ValueError(f"no checkpoint in {os.path.join(run_dir, 'checkpoints')} yet: nothing "
                     "to sample from")
  flow = Glow.from_config(config)
  tf.train.Checkpoint(model=flow).restore(prefix).expect_partial().assert_existing_objects_matched()
  return flow, prefix


def main(argv=None):
  args = parse(sys.argv[1:] if argv is None else argv)
  try:
    flow, prefix = load_flow(args.run_dir)
  except ValueError as error:  # also --resume's "all damaged" from readable_checkpoint
    print(f"error: {str(error).replace('--resume: ', '')}", file=sys.stderr)
    return 2
  from tfinvconv.train import callbacks  # pylint: disable=g-import-not-at-top
  grid = callbacks.sample_grid(flow, args.n, args.temperature, args.seed)
  callbacks.write_png(args.output, grid)
  print(f"{args.n} samples at temperature {args.temperature} from {prefix}: {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
