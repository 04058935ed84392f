"""What the compiled op covers (build_info()), and the import-time check that no GPU waits idle
while TensorFlow places every solve on the CPU because the op has no GPU kernel (a wheel built on
tensorflow-cpu, or a source build without nvcc, has none; TensorFlow itself says nothing)."""

import json
import os
import warnings

import tensorflow as tf
# The kernel registry is the truth about where TensorFlow can place the op, whatever the build
# meant to compile; there is no public API for it.
from tensorflow.python.framework import kernels as kernel_registry

from tfinvconv.ops import _loader
from tfinvconv.ops.inverse_causal_conv import OP_NAME

# Every op the library registers carries this prefix (custom_ops/inverse_conv/tf/*.cc).
_OP_PREFIX = OP_NAME.split(">")[0] + ">"
REQUIRE_GPU = "TFINVCONV_REQUIRE_GPU"
_warned = False  # the GPU warning is given once per process


class GpuKernelWarning(UserWarning):
  """TensorFlow sees a GPU, but the compiled op has no GPU kernel: every solve runs on the CPU."""


def build_info():
  """What the compiled op covers in this process, read from TensorFlow's kernel registry.

  Returns:
    A dict: "library" (its path); "loaded" (bool); "error" (why it did not load, else None);
    "auto_implementation" ("custom_op", or "tf": implementation="auto" then falls back to the
    pure-TensorFlow solve); "kernels" ({op name: {device: [dtype names]}}, an empty list for an
    op without a type attribute; {} when nothing loaded); "tensorflow" (the version it was built
    against); "cuda" (None for a CPU-only build, else {"nvcc": release, "targets": [sm_XX...,
    compute_XX]}; a sentence when the build recorded nothing).
  """
  library, error = _loader.load_library()
  return {
      "library": _loader.LIBRARY_FILE,
      "loaded": library is not None,
      "error": error,
      "auto_implementation": "custom_op" if library is not None else "tf",
      "kernels": _registered_kernels() if library is not None else {},
      "tensorflow": _loader.built_for(),
      "cuda": _recorded_cuda(),
  }


def _registered_kernels():
  found = {}
  for kernel in kernel_registry.get_all_registered_kernels().kernel:
    if kernel.op.startswith(_OP_PREFIX):
      dtypes = found.setdefault(kernel.op, {}).setdefault(kernel.device_type, [])
      dtypes += [tf.dtypes.as_dtype(t).name for c in kernel.constraint if c.name == "T"
                 for t in c.allowed_values.list.type]
  return {op: {device: sorted(dtypes) for device, dtypes in sorted(devices.items())}
          for op, devices in sorted(found.items())}


def _recorded_cuda():
  try:
    with open(_loader.CUDA_FILE) as f:
      return json.load(f)["cuda"]
  except (OSError, ValueError, KeyError, TypeError) as error:
    return (f"not recorded ({error!r}): rebuild the library with `pip install "
            "--no-build-isolation -e .` in the repository root, which records it")


def check_gpu_kernels():
  """Run at import. Warns once (GpuKernelWarning) when TensorFlow sees a GPU and the loaded op
  has no GPU kernel; with TFINVCONV_REQUIRE_GPU=1 raises RuntimeError instead, and also when
  TensorFlow sees no GPU at all.

  Raises:
    ValueError: TFINVCONV_REQUIRE_GPU is neither unset, "", "0" nor "1".
    RuntimeError: TFINVCONV_REQUIRE_GPU=1 and the solve cannot run on a GPU.
  """
  require = _require_gpu()
  library, _ = _loader.load_library()
  # Without the library the pure-TF solve runs, and TensorFlow places it on the GPU.
  solve_on_gpu = library is None or _has_gpu_kernel()
  if solve_on_gpu and not require:
    return  # not even listing devices: that initialises CUDA, which importing should not need
  gpus = tf.config.list_physical_devices("GPU")
  if not gpus and require:
    raise RuntimeError(f"tfinvconv: {REQUIRE_GPU}=1, but TensorFlow sees no GPU ({_why_no_gpu()})")
  if gpus and not solve_on_gpu:
    _report_cpu_only(gpus, require)


def _require_gpu():
  value = os.environ.get(REQUIRE_GPU, "")
  if value not in ("", "0", "1"):  # a typo in a cluster job must not pass as "warn only"
    raise ValueError(f"tfinvconv: {REQUIRE_GPU}={value!r}: expected 1 (fail unless the solve "
                     "can run on a GPU) or 0 (warn; the default, as when unset)")
  return value == "1"


def _has_gpu_kernel():
  found = kernel_registry.get_registered_kernels_for_op(OP_NAME).kernel
  return any(kernel.device_type == "GPU" for kernel in found)


def _why_no_gpu():
  if not tf.test.is_built_with_gpu_support():
    return (f"TensorFlow {tf.__version__} is a CPU-only build, e.g. tensorflow-cpu: install "
            f"`tensorflow[and-cuda]=={tf.__version__}`")
  return "none found: check the NVIDIA driver, CUDA_VISIBLE_DEVICES and TensorFlow's log"


def _report_cpu_only(gpus, require):
  global _warned
  message = _cpu_only_message(gpus)
  if require:
    raise RuntimeError(f"{message} (an error because {REQUIRE_GPU}=1)")
  if not _warned:
    _warned = True
    warnings.warn(f"{message}; {REQUIRE_GPU}=1 makes this an error", GpuKernelWarning,
                  stacklevel=3)


def _cpu_only_message(gpus):
  """Says which GPUs wait, what the op covers, and how to build its CUDA kernels."""
  covered = _registered_kernels().get(OP_NAME, {})
  covered = ", ".join(f"{device} ({', '.join(dtypes)})" for device, dtypes in covered.items())
  cuda = tf.sysconfig.get_build_info().get("cuda_version")  # e.g. "12.5.1"; absent on CPU builds
  nvcc = (f"nvcc of CUDA {cuda.split('.')[0]}.x (this TensorFlow was built with CUDA {cuda})"
          if cuda else "nvcc of CUDA 12.x")
  return (f"tfinvconv: TensorFlow sees {', '.join(gpu.name for gpu in gpus)}, but the compiled "
          f"op has kernels for {covered} only, so every inverse_causal_conv2d solve runs on the "
          "CPU. A wheel built on tensorflow-cpu and a source build without nvcc on the PATH "
          "have no CUDA kernels. Build them from source with "
          f"{nvcc} on the PATH: `TFINVCONV_CUDA=1 pip install --no-build-isolation -e .` in a "
          "checkout, or the sdist in place of `-e .` (README.md, \"Building\"; "
          "docs/multi_gpu.md, section 2). Meanwhile implementation='tf' runs the pure-TensorFlow "
          "solve on the GPU. tfinvconv.ops.build_info() shows what the op covers")
