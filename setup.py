"""Builds tfinvconv and its op library (g++ with TensorFlow's own flags; nvcc when CUDA is on).

    pip install --no-build-isolation -e .

--no-build-isolation matters: the op must be compiled against the TensorFlow that will load it.
Environment:
  TFINVCONV_CUDA=auto|1|0  build the CUDA kernels: auto (default) when nvcc is on the PATH and the
                           installed TensorFlow was built with CUDA; 1 forces, 0 disables.
  TFINVCONV_MARCH=native   build the CPU kernels only for this machine (g++ -march=<value>); the
                           library then dies with SIGILL on CPUs that lack its instructions.
                           Default (unset or empty): a portable library that runs on any x86-64
                           CPU, with the kernels compiled for baseline x86-64, AVX2+FMA and
                           AVX-512 and the widest this CPU supports chosen at run time
                           (tfinvconv.ops.cpu_path(); TFINVCONV_CPU_PATH forces one).

Dependencies: TensorFlow itself is not declared. It comes as `tensorflow`, `tensorflow-cpu` or
`tensorflow[and-cuda]` (one of them, never two), and the op binary works only with the version it
was compiled against (TF_VERSION below, recorded in the wheel and checked at import): declaring
`tensorflow` would make pip install a second, GPU-sized TensorFlow next to a user's
`tensorflow-cpu`, and an unpinned one could replace the version the binary needs. Install the
matching TensorFlow first (see README, "Installing"). tf-keras itself declares `tensorflow`, which
is why the Makefile installs it with --no-deps; do the same next to `tensorflow-cpu`.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# The one list of sources; BUILD names the same files (tests/test_build_files.py checks it).
CORE_CPU_SOURCES = ["custom_ops/inverse_conv/core/inverse_conv_cpu.cc"]
CORE_GPU_SOURCES = ["custom_ops/inverse_conv/core/inverse_conv_gpu.cu.cc"]
TF_WRAPPER_SOURCES = ["custom_ops/inverse_conv/tf/inverse_conv_ops.cc"]
CXX_FLAGS = ["-std=c++17", "-O3", "-fPIC", "-Wno-deprecated-declarations",
             "-Wno-interference-size", "-Wno-psabi"]
NVCC_FLAGS = ["-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC"]
LIBRARY = "tfinvconv.ops._inverse_conv_ops"
ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_arch():
  """custom_ops/inverse_conv/tools/cuda_arch.py: the one list of GPU targets."""
  path = os.path.join(ROOT, "custom_ops", "inverse_conv", "tools", "cuda_arch.py")
  spec = importlib.util.spec_from_file_location("cuda_arch", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tf_build_info():
  """What the build needs from the installed TensorFlow: compile and link flags, whether it is a
  CUDA build, and its version (the library works with that version only)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return (tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags(),
          tf.test.is_built_with_cuda(), tf.__version__)


def _want_cuda(tf_has_cuda):
  choice = os.environ.get("TFINVCONV_CUDA", "auto").lower()
  if choice in ("0", "off", "false", "no"):
    return False
  if choice in ("1", "on", "true", "yes"):
    return True
  return shutil.which("nvcc") is not None and tf_has_cuda


def _run(command):
  print(" ".join(command), file=sys.stderr)
  subprocess.check_call(command, cwd=ROOT)


class BuildOpLibrary(build_ext):
  """Compiles the op library with TF's flags instead of distutils' defaults."""

  def get_ext_filename(self, fullname):
    return fullname.replace(".", os.sep) + ".so"  # the name tfinvconv/ops/_loader.py loads

  def build_extension(self, ext):
    compile_flags, link_flags, tf_has_cuda, tf_version = _tf_build_info()
    output = self.get_ext_fullpath(ext.name)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    march = os.environ.get("TFINVCONV_MARCH", "")
    # A -march build names its single CPU path after the value (inverse_conv_cpu.cc).
    cxx = CXX_FLAGS + ([f"-march={march}", f'-DTFINVCONV_MARCH_NAME="{march}"'] if march else [])
    cxx += ["-I", ROOT] + compile_flags
    objects, extra_link = [], []
    with tempfile.TemporaryDirectory() as scratch:
      if _want_cuda(tf_has_cuda):
        cuda_home = os.path.dirname(os.path.dirname(os.path.realpath(shutil.which("nvcc"))))
        cxx += ["-DGOOGLE_CUDA=1", "-I", _cuda_include_shim(scratch, cuda_home)]
        for source in CORE_GPU_SOURCES:
          obj = os.path.join(scratch, os.path.basename(source) + ".o")
          arch = _cuda_arch()
          _run(["nvcc", "-c", "-x", "cu", "-DGOOGLE_CUDA=1", *NVCC_FLAGS,
                *arch.arch_flags(arch.nvcc_major()), "-I", ROOT, source, "-o", obj])
          objects.append(obj)
        # The CUDA runtime linked statically: the .so needs only the driver at run time.
        extra_link = [f"-L{cuda_home}/lib64", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
      _run(["g++", "-shared", *cxx, *CORE_CPU_SOURCES, *TF_WRAPPER_SOURCES, *objects, "-o",
            output, *link_flags, *extra_link])
    # The binary is tied to this TensorFlow: the loader compares before it loads anything. Next
    # to the library in the build folder (what a wheel packs) and in the source package (where an
    # editable install's library ends up: setuptools copies only the .so there).
    stamp = os.path.basename(output)[:-len(".so")] + ".tf_version"
    for folder in {os.path.dirname(output), os.path.join(ROOT, "tfinvconv", "ops")}:
      with open(os.path.join(folder, stamp), "w") as f:
        f.write(tf_version + "\n")


def _cuda_include_shim(scratch, cuda_home):
  """TF's GPU headers include third_party/gpus/cuda/include/...; point that at the toolkit."""
  shim = os.path.join(scratch, "cuda_shim")
  os.makedirs(os.path.join(shim, "third_party", "gpus", "cuda"))
  os.symlink(os.path.join(cuda_home, "include"),
             os.path.join(shim, "third_party", "gpus", "cuda", "include"))
  return shim


# Pinned as in requirements.txt (tests/test_build_files.py compares them): TFP 0.25 is the
# release for TF 2.21 and tf-keras must match TF's minor version.
TF_VERSION = "2.21.0"
INSTALL_REQUIRES = [
    "tensorflow-probability==0.25.0",
    f"tf-keras=={TF_VERSION}",
    "scipy",  # the Conv1x1 bijector's random rotation and LU initialisation
    "numpy",
]
EXTRAS_REQUIRE = {
    "datasets": ["tensorflow-datasets==4.9.10"],  # python -m train with TFDS names
    # The Makefile builds horovod from source with a patch for this TF (`make horovod`);
    # pip alone cannot build it against TF >= 2.19.
    "horovod": ["horovod==0.28.1"],
}

setup(
    name="tfinvconv",
    version="0.1.0",
    description="Invertible convolutions for normalizing flows in TensorFlow",
    packages=find_packages(include=["tfinvconv", "tfinvconv.*"]),
    # The version stamp next to the library (the .so itself comes from build_ext).
    package_data={"tfinvconv.ops": ["_inverse_conv_ops.tf_version"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    ext_modules=[Extension(LIBRARY, sources=CORE_CPU_SOURCES + TF_WRAPPER_SOURCES)],
    cmdclass={"build_ext": BuildOpLibrary},
    zip_safe=False,
)
