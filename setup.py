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

Dependencies: the op binary works only with the TensorFlow version it was compiled against
(recorded next to it in the wheel and checked at import), so the wheel requires exactly that
version: `tensorflow==<the version it was built with>` (_installed_tensorflow_version below; a
build against another patch release pins that one), and a later patch release is not installed
in its place (the loader would refuse the op: the slow pure-TF solve). The pin names
`tensorflow`, the distribution that serves CPU and GPU on Linux (`tensorflow[and-cuda]`
satisfies it too), even when the build ran on `tensorflow-cpu`: the op built on one loads in the
other (CI installs the wheel built on `tensorflow-cpu` with `tensorflow`). Leaving TensorFlow
out would not keep a second one away from a `tensorflow-cpu` install anyway: tf-keras, which the
package needs, declares `tensorflow` itself. So `tensorflow-cpu` users install tf-keras and this
wheel with --no-deps after the rest (README, "Installing": one command, which CI runs).

Build without pip's build isolation: the isolated environment has no TensorFlow to compile
against, and declaring one as a build requirement would compile against a second, downloaded
one; tools/build_backend.py stops such a build at once and says what to do.
"""

import importlib.util
import json
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


def _tool(name):
  """A module of custom_ops/inverse_conv/tools/: cuda_arch (the one list of GPU targets) or
  glibc_compat."""
  path = os.path.join(ROOT, "custom_ops", "inverse_conv", "tools", name + ".py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tf_build_info():
  """What the build needs from the installed TensorFlow: compile and link flags, whether it is a
  CUDA build, and its version (the library works with that version only)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return (tf.sysconfig.get_compile_flags(), _without_framework(tf.sysconfig.get_link_flags()),
          tf.test.is_built_with_cuda(), tf.__version__)


def _without_framework(link_flags):
  """TF's link flags less libtensorflow_framework.so.2 (and the -L folder it is found in: the
  op links no other library of TF's). The op is only ever loaded by
  tf.load_op_library, after TensorFlow has loaded that library with RTLD_GLOBAL (its
  pywrap_dlopen_global_flags), so the op's TF symbols resolve against the one in the process.
  Not naming it keeps it out of the op's DT_NEEDED, where no manylinux policy allows it: the
  wheel then passes `auditwheel show` as it is (tests/dist_check.py)."""
  return [flag for flag in link_flags if "tensorflow_framework" not in flag
          and not flag.startswith("-L")]


def _want_cuda(tf_has_cuda):
  choice = os.environ.get("TFINVCONV_CUDA", "auto").lower()
  if choice in ("0", "off", "false", "no"):
    return False
  if choice in ("1", "on", "true", "yes"):
    if shutil.which("nvcc") is None:
      sys.exit("tfinvconv: TFINVCONV_CUDA=1 asks for the CUDA kernels, but there is no nvcc on the "
               "PATH. Put a CUDA toolkit's bin folder on the PATH (or set TFINVCONV_CUDA=0 to "
               "build without GPU kernels).")
    return True
  return shutil.which("nvcc") is not None and tf_has_cuda


def _refuse_to_drop_cuda_kernels(output):
  """A CPU-only build over a library that has CUDA kernels (a `make setup` or a plain
  `pip install -e .` on a GPU machine whose nvcc is not on the PATH, or under tensorflow-cpu)
  would leave every solve silently on the CPU. Stop unless the user asked for it."""
  if os.environ.get("TFINVCONV_CUDA", "auto").lower() in ("0", "off", "false", "no"):
    return
  for folder in {os.path.dirname(output), os.path.join(ROOT, "tfinvconv", "ops")}:
    stamp = os.path.join(folder, os.path.basename(output)[:-len(".so")] + ".cuda.json")
    try:
      with open(stamp) as f:
        cuda = json.load(f).get("cuda")
    except (OSError, ValueError):
      continue
    if cuda:
      sys.exit(f"tfinvconv: the op library here was built with CUDA kernels ({stamp}: nvcc "
               f"{cuda.get('nvcc')}), and this build would replace it with a CPU-only one "
               "(no nvcc on the PATH, or a TensorFlow built without CUDA). Put nvcc on the "
               "PATH and use a TensorFlow built with CUDA, or set TFINVCONV_CUDA=0 to build "
               "without CUDA kernels on purpose.")


def _run(command):
  print(" ".join(command), file=sys.stderr)
  subprocess.check_call(command, cwd=ROOT)


class BuildOpLibrary(build_ext):
  """Compiles the op library with TF's flags instead of distutils' defaults."""

  def get_ext_filename(self, fullname):
    return fullname.replace(".", os.sep) + ".so"  # the name tfinvconv/ops/_loader.py loads

  def build_extension(self, ext):
    compile_flags, link_flags, tf_has_cuda, tf_version = _tf_build_info()
    if tf_version.replace("-", ".") != TF_BUILD_VERSION:  # 2.x.y-dev2025... is 2.x.y.dev2025...
      sys.exit(f"tfinvconv: TensorFlow {tf_version} imports, but the installed distribution's "
               f"metadata, which the wheel's pin copies, says {TF_BUILD_VERSION}")
    output = self.get_ext_fullpath(ext.name)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    march = os.environ.get("TFINVCONV_MARCH", "")
    # A -march build names its single CPU path after the value (inverse_conv_cpu.cc).
    cxx = CXX_FLAGS + ([f"-march={march}", f'-DTFINVCONV_MARCH_NAME="{march}"'] if march else [])
    cxx += ["-I", ROOT] + compile_flags
    with tempfile.TemporaryDirectory() as scratch:
      objects, extra_link, cuda = [], [], None
      if _want_cuda(tf_has_cuda):
        cxx, objects, extra_link, cuda = _cuda_build(scratch, cxx)
      else:
        _refuse_to_drop_cuda_kernels(output)
      link = ["g++", "-shared", *cxx, *CORE_CPU_SOURCES, *TF_WRAPPER_SOURCES, *objects, "-o",
              output, *link_flags, *extra_link]
      _run(link)
      if cuda:  # the static CUDA runtime's glibc symbols: see glibc_compat.py
        stubs = _tool("glibc_compat").write_stubs(output, scratch)
        if stubs:  # relinked with the stubs right after the runtime, before libc
          after = link.index("-lcudart_static") + 1
          _run(link[:after] + _tool("glibc_compat").link_flags(stubs) + link[after:])
    _write_stamps(output, tf_version, cuda)


def _cuda_build(scratch, cxx):
  """Compiles the CUDA kernels; returns the g++ flags that register them, their objects, the
  link flags they need and what built them (recorded in the .cuda.json stamp)."""
  arch = _tool("cuda_arch")
  cuda_home = arch.cuda_home()
  major = arch.nvcc_major()
  objects = []
  for source in CORE_GPU_SOURCES:
    obj = os.path.join(scratch, os.path.basename(source) + ".o")
    _run(["nvcc", "-c", "-x", "cu", "-DGOOGLE_CUDA=1", *NVCC_FLAGS, *arch.arch_flags(major),
          "-I", ROOT, source, "-o", obj])
    objects.append(obj)
  # TF's GPU headers (Eigen's among them) include the CUDA runtime's headers, by both paths.
  cxx = cxx + ["-DGOOGLE_CUDA=1", "-I", _cuda_include_shim(scratch, cuda_home),
               "-I", os.path.join(cuda_home, "include")]
  # The CUDA runtime linked statically: the .so needs only the driver at run time.
  extra_link = [f"-L{cuda_home}/lib64", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
  return cxx, objects, extra_link, {"nvcc": arch.nvcc_release(), "targets": arch.targets(major)}


def _write_stamps(output, tf_version, cuda):
  """Records next to the library what built it. .tf_version: the TensorFlow it is tied to (the
  loader compares before it loads anything). .cuda.json: the nvcc release and GPU targets of its
  CUDA kernels, {"cuda": null} for a CPU-only build (tfinvconv.ops.build_info() reports it).
  Written in the build folder (what a wheel packs) and in the source package (where an editable
  install's library ends up: setuptools copies only the .so there)."""
  base = os.path.basename(output)[:-len(".so")]
  stamps = {base + ".tf_version": tf_version + "\n",
            base + ".cuda.json": json.dumps({"cuda": cuda}) + "\n"}
  for folder in {os.path.dirname(output), os.path.join(ROOT, "tfinvconv", "ops")}:
    for name, text in stamps.items():
      with open(os.path.join(folder, name), "w") as f:
        f.write(text)


def _cuda_include_shim(scratch, cuda_home):
  """TF's GPU headers include third_party/gpus/cuda/include/...; point that at the toolkit."""
  shim = os.path.join(scratch, "cuda_shim")
  os.makedirs(os.path.join(shim, "third_party", "gpus", "cuda"))
  os.symlink(os.path.join(cuda_home, "include"),
             os.path.join(shim, "third_party", "gpus", "cuda", "include"))
  return shim


# The TensorFlow the repository is tested with, as in requirements.txt (tests/test_build_files.py
# compares them): TFP 0.25 is the release for TF 2.21 and tf-keras must match TF's minor version.
TF_VERSION = "2.21.0"


def _installed_tensorflow_version():
  """The version of the TensorFlow this environment imports, which the op is compiled against,
  from its distribution's metadata (importing TF takes seconds); TF_VERSION where there is none
  (an sdist is built without TensorFlow; a wheel never is: tools/build_backend.py)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  versions = {metadata.version(name)
              for name in metadata.packages_distributions().get("tensorflow", [])}
  if len(versions) > 1:  # two TensorFlows in one environment: which one imports is luck
    sys.exit(f"tfinvconv: more than one TensorFlow is installed ({sorted(versions)}): keep one")
  return versions.pop() if versions else TF_VERSION


# The wheel's requirements: exactly the TensorFlow its op was built against (the docstring says
# why `tensorflow`), and the versions tested here of the rest.
TF_BUILD_VERSION = _installed_tensorflow_version()
INSTALL_REQUIRES = [
    f"tensorflow=={TF_BUILD_VERSION}",
    "tensorflow-probability==0.25.0",
    f"tf-keras=={TF_VERSION}",
    "scipy",  # the Conv1x1 bijector's random rotation and LU initialisation
    "numpy",
    "tensorboard==2.21.0",  # tfinvconv-train writes its curves (TF no longer depends on it)
    "scikit-learn",  # tfinvconv-train's bundled data: the digits and the two photos
    "pillow",  # scikit-learn reads its photos with it
]
EXTRAS_REQUIRE = {
    # python -m tfinvconv.train with TFDS names; tensorflow-datasets imports importlib_resources
    # at tfds.load without declaring it (every rank would end in an ImportError)
    "datasets": ["tensorflow-datasets==4.9.10", "importlib_resources"],
    # The Makefile builds horovod from source with a patch for this TF (`make horovod`);
    # pip alone cannot build it against TF >= 2.19.
    "horovod": ["horovod==0.28.1"],
}
# Placeholder: the repository has no public address yet (.invalid is reserved for names that
# never resolve). Replace it before the first upload to an index.
PROJECT_URL = "https://tfinvconv.invalid/"


def _readme():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    return f.read()


setup(
    name="tfinvconv",
    version="0.1.0",
    description="Invertible convolutions for normalizing flows in TensorFlow",
    long_description=_readme(),
    long_description_content_type="text/markdown",
    url=PROJECT_URL,
    author="The tfinvconv authors",
    license_expression="Apache-2.0",  # PEP 639; LICENSE holds the text
    license_files=["LICENSE"],
    keywords=["normalizing flows", "invertible convolution", "glow", "tensorflow",
              "tensorflow-probability", "custom op"],
    classifiers=[
        # No licence classifier: PEP 639 replaces them with License-Expression.
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: C++",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",  # the version built and tested here
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Mathematics",
    ],
    packages=find_packages(include=["tfinvconv", "tfinvconv.*"]),
    # The stamps next to the library (the .so itself comes from build_ext): _write_stamps.
    package_data={"tfinvconv.ops": ["_inverse_conv_ops.tf_version",
                                    "_inverse_conv_ops.cuda.json"]},
    python_requires=">=3.10",
    # The trainer (python -m tfinvconv.train) as a command.
    entry_points={"console_scripts": ["tfinvconv-train = tfinvconv.train.__main__:main",
                                      "tfinvconv-sample = tfinvconv.sample:main"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    ext_modules=[Extension(LIBRARY, sources=CORE_CPU_SOURCES + TF_WRAPPER_SOURCES)],
    cmdclass={"build_ext": BuildOpLibrary},
    zip_safe=False,
)
