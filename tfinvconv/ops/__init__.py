"""Masked causal convolutions and their exact inverses (Inverse-Flow), as TensorFlow ops."""

from tfinvconv.ops import _build_info
from tfinvconv.ops import _loader
from tfinvconv.ops._build_info import GpuKernelWarning
from tfinvconv.ops._build_info import build_info
from tfinvconv.ops.causal_conv import CORNERS
from tfinvconv.ops.causal_conv import causal_conv2d
from tfinvconv.ops.causal_conv import kernel_mask
from tfinvconv.ops.inverse_causal_conv import IMPLEMENTATIONS
from tfinvconv.ops.inverse_causal_conv import cpu_path
from tfinvconv.ops.inverse_causal_conv import inverse_causal_conv2d

__all__ = ["CORNERS", "GpuKernelWarning", "IMPLEMENTATIONS", "build_info", "causal_conv2d",
           "cpu_path", "inverse_causal_conv2d", "kernel_mask"]

# Register the compiled op now (a SavedModel that contains it needs it before loading). A missing
# or broken library is only recorded here; using the op says why it is unavailable. A library
# built for another TensorFlow is said at once: it is never loaded (it could crash).
_loader.load_library()
_mismatch = _loader.version_mismatch()
if _mismatch:
  _loader.warn_pure_tf(_mismatch)
# A GPU left idle because the op has no GPU kernel is said now too (TensorFlow would place every
# solve on the CPU without a word); TFINVCONV_REQUIRE_GPU=1 makes it an error.
_build_info.check_gpu_kernels()
