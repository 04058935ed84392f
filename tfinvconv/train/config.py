"""A run's configuration: every value a preset sets or a flag overrides, and the values the
command line may choose from (read from the modules that define them)."""

import dataclasses
import math
import os

from tfinvconv import ops
from tfinvconv.models import glow
from tfinvconv.train import data
from tfinvconv.train import distributed

# --mixed-precision: the tf_keras policy the coupling networks are built under.
POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}

# The command line's choices for each flag that has a fixed set.
CHOICES = {
    "mixer": glow.MIXERS,
    "coupling": glow.COUPLINGS,
    "dequantization": glow.DEQUANTIZATIONS,
    "backprop": glow.BACKPROPS,
    "strategy": distributed.STRATEGIES,
    "implementation": ops.IMPLEMENTATIONS,
    "mixed_precision": tuple(POLICIES),
}


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
  backprop: str = "stored"       # or "checkpointed" / "reversible" (Glow's backprop modes)
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
      glow.check_bins(self.n_bits, self.n_bins or None)
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

  def check_engine(self, engine):
    """Refuses the settings an elastic run cannot keep while its workers come and go."""
    if not engine.elastic:
      return
    if self.scale_lr:
      raise ValueError("--scale-lr multiplies by the number of workers, which changes in an "
                       "elastic run: leave it off and set --learning-rate")
    if self.steps_per_epoch:
      raise ValueError("--steps-per-epoch: an elastic run's epochs are passes over the data "
                       "(their steps change with the number of workers): leave it at 0")
