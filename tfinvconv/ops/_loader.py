"""Loads the compiled op library once; the only module that knows where the .so lives."""

import os
import warnings

import tensorflow as tf

LIBRARY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_inverse_conv_ops.so")
# Written by setup.py next to the library: the TensorFlow version it was compiled against.
VERSION_FILE = LIBRARY_FILE[:-len(".so")] + ".tf_version"
# Written beside it too: the nvcc release and GPU targets of its CUDA kernels, or null.
CUDA_FILE = LIBRARY_FILE[:-len(".so")] + ".cuda.json"

_library = None
_load_error = None
_tried = False
_warned = set()  # reasons already given for using the pure-TF solve, one warning each


def load_library():
  """Returns (library, None) when the compiled op loaded, else (None, reason)."""
  global _library, _load_error, _tried
  if not _tried:
    _tried = True
    mismatch = version_mismatch()
    if not os.path.exists(LIBRARY_FILE):
      _load_error = (f"{LIBRARY_FILE} was not built (run `pip install --no-build-isolation -e .` "
                     "in the repository root)")
    elif mismatch:
      _load_error = mismatch  # loading it could fail on a missing symbol or crash
    else:
      try:
        _library = tf.load_op_library(LIBRARY_FILE)
      except (tf.errors.NotFoundError, OSError) as error:  # e.g. built against another TF
        _load_error = f"{LIBRARY_FILE} failed to load: {error}"
  return _library, _load_error


def built_for():
  """The TensorFlow version the library was built against, or None when its build did not
  record one."""
  try:
    with open(VERSION_FILE) as f:
      return f.read().strip() or None
  except OSError:
    return None


def version_mismatch():
  """Why the library cannot be used with the installed TensorFlow, or None when it can (or when
  its build did not record a version)."""
  version = built_for()
  if version is None or version == tf.__version__:
    return None
  return (f"{LIBRARY_FILE} was built against TensorFlow {version}, but TensorFlow "
          f"{tf.__version__} is installed (the binary works only with the version it was built "
          "against): rebuild it with `pip install --no-build-isolation -e .` in the repository "
          "root, or install that TensorFlow")


def warn_pure_tf(reason, stacklevel=2):
  """Says once per process and reason why the pure-TensorFlow solve is used instead of the
  compiled op (the package's import and the first solve would otherwise both say it)."""
  if reason in _warned:
    return
  _warned.add(reason)
  warnings.warn(f"tfinvconv: using the pure-TensorFlow solve because {reason}", RuntimeWarning,
                stacklevel=stacklevel + 1)
