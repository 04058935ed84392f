"""Smoke test of an installed tfinvconv wheel (`make wheel-smoke`, and `make wheel-install-check`
after each of README's install routes), run from outside the source tree: one TensorFlow is
installed, the package and its op library come from the install, the library carries the
TensorFlow version stamp it was built with, the wheel's metadata requires exactly that TensorFlow,
the library loads, the compiled op inverts the convolution, a bijector works inside a TFP
TransformedDistribution, and a tiny Glow trains with a finite loss; the op's GPU kernels are
registered.

    python tests/wheel_smoke.py SOURCE_ROOT     # SOURCE_ROOT: the checkout it must not use
"""

from importlib import metadata
import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfinvconv
from tfinvconv import bijectors
from tfinvconv import models
from tfinvconv import ops
from tfinvconv.ops import _loader


def check_installed_package(source_root):
  package = os.path.dirname(os.path.abspath(tfinvconv.__file__))
  assert not package.startswith(os.path.abspath(source_root) + os.sep), (
      f"tfinvconv imported from the source tree ({package}), not from the wheel")
  assert os.path.basename(os.path.dirname(package)) == "site-packages", package
  assert os.path.dirname(_loader.LIBRARY_FILE) == os.path.join(package, "ops")
  assert os.path.exists(_loader.LIBRARY_FILE), f"the wheel has no op library: {package}/ops"
  with open(_loader.VERSION_FILE) as f:  # the stamp the import-time check reads
    stamp = f.read().strip()
  assert stamp == tf.__version__, f"wheel built for TF {stamp}, TF {tf.__version__} installed"
  # The metadata pins what the stamp says (setup.py): pip installs the TensorFlow the op needs.
  pins = [r for r in metadata.requires("tfinvconv") if r.startswith("tensorflow=")]
  assert pins == [f"tensorflow=={stamp}"], (pins, stamp)
  library, reason = _loader.load_library()
  assert library is not None, reason
  print(f"tfinvconv from {package}, op library for TF {stamp}, CPU path {ops.cpu_path()}")


def check_one_tensorflow():
  """Two distributions that both ship the `tensorflow` package (tensorflow and tensorflow-cpu, as
  a naive install next to tensorflow-cpu gets) overwrite each other's files."""
  providers = metadata.packages_distributions().get("tensorflow", [])
  assert len(set(providers)) == 1, f"TensorFlow distributions installed: {sorted(providers)}"
  print(f"one TensorFlow: {providers[0]} {metadata.version(providers[0])}")


def check_gpu_kernels():
  """The wheel serves GPU users: TensorFlow's kernel registry lists the solve's GPU kernels in
  float32 and float64, and build_info() names the CUDA that built them. Under `tensorflow` (a
  CUDA build) with no GPU present they register without running; TensorFlow does not even
  look for libcuda before a GPU is asked for."""
  info = ops.build_info()
  solve = info["kernels"].get("TfInvConv>InverseCausalConv2D", {})
  assert solve.get("GPU") == ["float32", "float64"], info["kernels"]
  assert solve.get("CPU") == ["float32", "float64"], info["kernels"]
  assert info["cuda"] and info["cuda"]["targets"], info["cuda"]
  print(f"GPU kernels registered (float32, float64), built by nvcc {info['cuda']['nvcc']} for "
        f"{' '.join(info['cuda']['targets'])}; TensorFlow built with CUDA: "
        f"{tf.test.is_built_with_cuda()}")


def check_op_round_trip():
  rng = np.random.default_rng(0)
  kernel = rng.normal(scale=0.1, size=(3, 3, 5, 5)).astype(np.float32)
  kernel[2, 2] += np.eye(5, dtype=np.float32)
  x = rng.normal(size=(2, 7, 6, 5)).astype(np.float32)
  y = ops.causal_conv2d(x, kernel, "bottom_right")
  back = ops.inverse_causal_conv2d(y, kernel, "bottom_right", implementation="custom_op")
  error = float(tf.reduce_max(tf.abs(back - x)))
  assert error < 1e-4, error
  print(f"op round trip (compiled op): max error {error:.1e}")


def check_transformed_distribution():
  layer = bijectors.InverseConv(3, kernel_size=3)
  base = tfp.distributions.Sample(tfp.distributions.Normal(0.0, 1.0), [4, 4, 3])
  dist = tfp.distributions.TransformedDistribution(base, layer)
  samples = dist.sample(2, seed=1)
  log_prob = dist.log_prob(samples)
  assert samples.shape == (2, 4, 4, 3) and np.all(np.isfinite(log_prob.numpy())), log_prob
  print(f"InverseConv in a TransformedDistribution: log_prob {log_prob.numpy()}")


def check_tiny_glow_fit():
  model = models.Glow((8, 8, 1), num_levels=2, depth=2, hidden_channels=8, mixer="inverse_conv")
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
  images = np.random.default_rng(2).integers(0, 256, size=(32, 8, 8, 1), dtype=np.uint8)
  history = model.fit(images, batch_size=16, epochs=1, verbose=0).history
  loss = history["loss"][-1]
  assert np.isfinite(loss), history
  print(f"tiny Glow: 2 steps, loss {loss:.3f} bits/dim")


def check_trainer_command():
  """The trainer comes with the wheel: its console script runs a tiny job on the bundled digits,
  from a folder outside the checkout."""
  script = os.path.join(os.path.dirname(sys.executable), "tfinvconv-train")
  assert os.path.exists(script), f"no console script {script}: setup.py's entry_points"
  with tempfile.TemporaryDirectory() as run_dir:
    result = subprocess.run(
        [script, "--depth", "1", "--hidden-channels", "8", "--epochs", "1", "--steps-per-epoch",
         "2", "--num-samples", "2", "--run-dir", run_dir], capture_output=True, text=True,
        timeout=600, cwd=run_dir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name in ("metrics.json", "model.json", "model.keras"):
      assert os.path.exists(os.path.join(run_dir, name)), (name, os.listdir(run_dir))
    drawn = subprocess.run(
        [script.replace("tfinvconv-train", "tfinvconv-sample"), "--run-dir", run_dir, "--n", "4",
         os.path.join(run_dir, "grid.png")], capture_output=True, text=True, timeout=600)
    assert drawn.returncode == 0, drawn.stdout[-2000:] + drawn.stderr[-2000:]
    assert os.path.exists(os.path.join(run_dir, "grid.png"))
  print("tfinvconv-train: a 2-step job on the digits wrote metrics.json and model.keras; "
        "tfinvconv-sample drew from it")


def main(argv):
  if len(argv) != 2:
    sys.exit(__doc__)
  check_one_tensorflow()
  check_installed_package(argv[1])
  check_gpu_kernels()
  check_op_round_trip()
  check_transformed_distribution()
  check_tiny_glow_fit()
  check_trainer_command()
  print("wheel smoke test passed")


if __name__ == "__main__":
  main(sys.argv)
