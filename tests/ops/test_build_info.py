"""What the compiled op says of itself (issue 28): build_info() reads TensorFlow's kernel registry
and the build's CUDA record; importing tfinvconv warns once when TensorFlow sees a GPU that the op
has no kernel for (faked here: this machine has no GPU), and TFINVCONV_REQUIRE_GPU=1 makes that an
error."""

import importlib
import json
import os
import subprocess
import sys
import warnings

import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels as kernel_registry

from tfinvconv import ops
from tfinvconv.ops import _build_info
from tfinvconv.ops import _loader
from tfinvconv.ops.inverse_causal_conv import OP_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
REQUIRE_GPU = "TFINVCONV_REQUIRE_GPU"


def test_build_info_is_the_kernel_registry_and_the_build_record():
  info = ops.build_info()
  assert info["loaded"] and info["error"] is None and info["auto_implementation"] == "custom_op"
  assert info["tensorflow"] == tf.__version__
  assert not isinstance(info["cuda"], str), info["cuda"]  # the build recorded it
  # GPU kernels exactly when the build says CUDA built some (this machine: CPU only).
  devices = ["CPU", "GPU"] if info["cuda"] else ["CPU"]
  assert info["kernels"] == {OP_NAME: {device: ["float32", "float64"] for device in devices},
                             "TfInvConv>CpuPath": {"CPU": []}}
  registered = kernel_registry.get_registered_kernels_for_op(OP_NAME).kernel
  assert sorted(k.device_type for k in registered) == sorted(devices * 2)
  json.dumps(info)  # plain data, for logs


def test_build_info_reports_the_recorded_cuda(tmp_path, monkeypatch):
  record = {"nvcc": "12.5", "targets": ["sm_70", "sm_90", "compute_90"]}
  (tmp_path / "cuda.json").write_text(json.dumps({"cuda": record}))
  monkeypatch.setattr(_loader, "CUDA_FILE", str(tmp_path / "cuda.json"))
  assert ops.build_info()["cuda"] == record
  (tmp_path / "cuda.json").write_text("{not json")
  assert "rebuild the library with `pip install" in ops.build_info()["cuda"]
  monkeypatch.setattr(_loader, "CUDA_FILE", str(tmp_path / "absent.json"))
  assert "not recorded" in ops.build_info()["cuda"]


def test_build_info_says_why_the_library_is_not_used(monkeypatch):
  monkeypatch.setattr(_loader, "load_library", lambda: (None, "the library is missing"))
  info = ops.build_info()
  assert (info["loaded"], info["error"], info["auto_implementation"], info["kernels"]) == (
      False, "the library is missing", "tf", {})


class FakeDevices:
  """What TensorFlow sees: `gpus` (none unless a test adds one); `listed`, each listing."""

  def __init__(self, monkeypatch):
    self.gpus, self.listed = [], []
    real = tf.config.list_physical_devices

    def list_physical_devices(device_type=None):
      self.listed.append(device_type)
      return list(self.gpus) if device_type == "GPU" else real(device_type)

    monkeypatch.setattr(tf.config, "list_physical_devices", list_physical_devices)


@pytest.fixture
def devices(monkeypatch):
  monkeypatch.setattr(_build_info, "_warned", False)
  monkeypatch.delenv(REQUIRE_GPU, raising=False)
  return FakeDevices(monkeypatch)


def _register_gpu_kernel(monkeypatch):
  real = kernel_registry.get_registered_kernels_for_op

  def with_gpu(name):
    found = real(name)
    found.kernel.add(op=name, device_type="GPU")
    return found

  monkeypatch.setattr(kernel_registry, "get_registered_kernels_for_op", with_gpu)


def test_a_gpu_without_a_gpu_kernel_is_said_once_at_import(devices):
  devices.gpus = [GPU]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    importlib.reload(ops)  # the package's import runs the check
    assert [w.category for w in caught] == [ops.GpuKernelWarning]
    _build_info.check_gpu_kernels()
    importlib.reload(ops)
  assert len(caught) == 1  # once per process
  assert caught[0].filename == ops.__file__  # points at the import, not into _build_info
  message = str(caught[0].message)
  for said in ("TensorFlow sees /physical_device:GPU:0", "kernels for CPU (float32, float64) only",
               "every inverse_causal_conv2d solve runs on the CPU",
               "`TFINVCONV_CUDA=1 pip install --no-build-isolation -e .`", "nvcc",
               "tfinvconv.ops.build_info()", "TFINVCONV_REQUIRE_GPU=1 makes this an error"):
    assert said in message, (said, message)


def test_no_warning_without_a_gpu(devices):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    importlib.reload(ops)
  assert devices.listed == ["GPU"]  # it did look


def test_a_gpu_kernel_is_neither_warned_about_nor_needs_a_device_listing(devices, monkeypatch):
  devices.gpus = [GPU]
  _register_gpu_kernel(monkeypatch)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    importlib.reload(ops)
  assert devices.listed == []  # listing initialises CUDA: not at import without need


def test_require_gpu_turns_the_warning_into_an_error(devices, monkeypatch):
  devices.gpus = [GPU]
  monkeypatch.setenv(REQUIRE_GPU, "1")
  monkeypatch.setattr(tf.sysconfig, "get_build_info", lambda: {"cuda_version": "12.5.1"})
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # an error instead of the warning, not as well
    with pytest.raises(RuntimeError, match="an error because TFINVCONV_REQUIRE_GPU=1") as raised:
      importlib.reload(ops)
  assert "sees /physical_device:GPU:0" in str(raised.value)
  assert "pip install --no-build-isolation" in str(raised.value)
  assert "nvcc of CUDA 12.x (this TensorFlow was built with CUDA 12.5.1)" in str(raised.value)


def test_require_gpu_fails_where_tensorflow_sees_no_gpu(devices, monkeypatch):
  monkeypatch.setenv(REQUIRE_GPU, "1")
  with pytest.raises(RuntimeError, match="TFINVCONV_REQUIRE_GPU=1, but TensorFlow sees no GPU"):
    _build_info.check_gpu_kernels()


def test_require_gpu_passes_with_a_gpu_and_its_kernel(devices, monkeypatch):
  devices.gpus = [GPU]
  _register_gpu_kernel(monkeypatch)
  monkeypatch.setenv(REQUIRE_GPU, "1")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _build_info.check_gpu_kernels()
  assert devices.listed == ["GPU"]


@pytest.mark.parametrize("value", ["yes", "true", "2"])
def test_a_bad_require_gpu_value_is_an_error(devices, monkeypatch, value):
  monkeypatch.setenv(REQUIRE_GPU, value)
  with pytest.raises(ValueError, match=f"TFINVCONV_REQUIRE_GPU='{value}': expected 1"):
    importlib.reload(ops)


@pytest.mark.parametrize("value", ["", "0"])
def test_require_gpu_off(devices, monkeypatch, value):
  devices.gpus = [GPU]
  monkeypatch.setenv(REQUIRE_GPU, value)
  with pytest.warns(ops.GpuKernelWarning):
    _build_info.check_gpu_kernels()


# The import's device listing must leave device configuration open, as the trainer and users
# configure devices after importing (only a fresh process shows it).
CONFIGURE_AFTER_IMPORT = """
import tensorflow as tf
listed, real = [], tf.config.list_physical_devices
tf.config.list_physical_devices = lambda kind=None: listed.append(kind) or real(kind)
import tfinvconv
assert listed == ["GPU"], listed
cpu = real("CPU")[0]
tf.config.set_visible_devices([cpu])
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
assert len(tf.config.list_logical_devices("CPU")) == 2
"""


@pytest.mark.slow  # a fresh process imports TensorFlow
def test_devices_can_be_configured_after_import():
  env = {k: v for k, v in os.environ.items() if k != REQUIRE_GPU}
  env["PYTHONPATH"] = ROOT
  run = subprocess.run([sys.executable, "-c", CONFIGURE_AFTER_IMPORT], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=False, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
