"""The build backend (pyproject.toml): setuptools' own, with one check before a wheel is built.

The op library is compiled against the TensorFlow that will load it (its flags, headers and
libtensorflow_framework.so.2; the binary works with that version only, setup.py's docstring says
why), so a wheel can only be built where that TensorFlow is installed. pip's default isolated
build environment has none: without this check the build fails only at the compile step, with
`ModuleNotFoundError: No module named 'tensorflow'`, after pip has resolved and begun downloading
the package's dependencies (572 MB of TensorFlow). Here it stops at pip's first question to the
backend, before any dependency is fetched, and says what to do.

Why not declare TensorFlow as a build requirement instead: pip would install a second, throwaway
TensorFlow (572 MB, the `tensorflow` distribution, on a `tensorflow-cpu` machine too) into the
isolated environment, the newest release its pin allows, and compile against that one instead of
the one installed. Where the two differ (another patch release), the library is stamped for a
TensorFlow the user does not run, and the loader refuses it (tfinvconv/ops/_loader.py). Building
against the installed one is the only build that always matches, hence `--no-build-isolation`.

Building an sdist needs no TensorFlow and is left alone.
"""

import importlib.util
import os
import re
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import build_sdist, get_requires_for_build_sdist  # noqa: F401


def _from_setup(pattern, default):
  """A version setup.py states (read as text: importing setup.py would run the build)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "setup.py")) as f:
    match = re.search(pattern, f.read(), re.M)
  return match.group(1) if match else default


TF = _from_setup(r'^TF_VERSION = "([^"]+)"', "<version>")
SDIST = "tfinvconv-" + _from_setup(r'version="([^"]+)"', "<version>") + ".tar.gz"
MESSAGE = f"""
tfinvconv: no TensorFlow here, and its op library must be compiled against the TensorFlow that
will load it. pip builds in an isolated environment without your packages unless told otherwise:
install the TensorFlow this release is built for first, then build without isolation:

    pip install tensorflow=={TF}     # or "tensorflow[and-cuda]=={TF}"
    pip install --no-build-isolation {SDIST}     # or, in a checkout: .

With tensorflow-cpu=={TF} instead, follow README.md, "Installing": tf-keras and tfinvconv
declare `tensorflow`, so pip adds that second TensorFlow unless told not to.

(TensorFlow is not a build requirement on purpose: pip would build against a second, downloaded
TensorFlow that need not be the one you run. tools/build_backend.py in the source says why.)
"""


def require_tensorflow():
  """Stops the build, with MESSAGE, where TensorFlow cannot be imported (find_spec: importing it
  takes seconds)."""
  if importlib.util.find_spec("tensorflow") is None:
    print(MESSAGE, file=sys.stderr)
    raise SystemExit("tfinvconv: TensorFlow is needed to build the op library (see above)")


def get_requires_for_build_wheel(config_settings=None):
  require_tensorflow()
  return _setuptools.get_requires_for_build_wheel(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
  require_tensorflow()  # also here: a frontend may skip the hook above
  return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
  require_tensorflow()
  return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def get_requires_for_build_editable(config_settings=None):
  require_tensorflow()
  return _setuptools.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
  require_tensorflow()
  return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
  require_tensorflow()
  return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
