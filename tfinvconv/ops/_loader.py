"""Loads the compiled op library once; the only module that knows where the .so lives."""

import os

import tensorflow as tf

LIBRARY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_inverse_conv_ops.so")

_library = None
_load_error = None
_tried = False


def load_library():
  """Returns (library, None) when the compiled op loaded, else (None, reason)."""
  global _library, _load_error, _tried
  if not _tried:
    _tried = True
    if not os.path.exists(LIBRARY_FILE):
      _load_error = (f"{LIBRARY_FILE} was not built (run `pip install --no-build-isolation -e .` "
                     "in the repository root)")
    else:
      try:
        _library = tf.load_op_library(LIBRARY_FILE)
      except (tf.errors.NotFoundError, OSError) as error:  # e.g. built against another TF
        _load_error = f"{LIBRARY_FILE} failed to load: {error}"
  return _library, _load_error
