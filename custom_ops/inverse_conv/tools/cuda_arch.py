"""The one list of GPU targets and the toolkit's facts, for setup.py and the Makefile
(`python cuda_arch.py` prints the -gencode flags, `python cuda_arch.py --home` the toolkit's root).

Machine code for every architecture the toolkit still supports from sm_70 (V100) to sm_90 (H100),
plus PTX for compute_90 so that newer GPUs JIT-compile it. CUDA 13 dropped sm_70 (its lowest
target is sm_75); with CUDA 12 (TensorFlow 2.21's own toolkit) sm_70 is built too.
"""

import os
import re
import shutil
import subprocess
import sys

MACHINE_CODE = (70, 75, 80, 86, 89, 90)
PTX = 90


def nvcc_release(nvcc="nvcc"):
  """The toolkit's release as nvcc --version prints it ("12.5"), or None without nvcc."""
  if shutil.which(nvcc) is None:
    return None
  out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
  match = re.search(r"release (\d+\.\d+)", out)
  return match.group(1) if match else None


def cuda_home(nvcc="nvcc"):
  """The toolkit's root (include/cuda_runtime.h, lib64/libcudart_static.a): CUDA_HOME where it is
  set, else the TOP that nvcc itself reports, so that a wrapper script on the PATH (for example
  /usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc) is followed."""
  if os.environ.get("CUDA_HOME"):
    return os.environ["CUDA_HOME"]
  dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                       capture_output=True, text=True, check=False)
  match = re.search(r"^#\$ TOP=(.*)$", dry.stdout + dry.stderr, re.M)
  if not match:
    raise RuntimeError(f"{nvcc} --dryrun names no toolkit folder (TOP=); set CUDA_HOME")
  return os.path.realpath(match.group(1).strip())


def nvcc_major(nvcc="nvcc"):
  release = nvcc_release(nvcc)
  return int(release.split(".")[0]) if release else None


def _machine_code(major):
  lowest = 75 if major is not None and major >= 13 else 70
  return [sm for sm in MACHINE_CODE if sm >= lowest]


def targets(major):
  """What arch_flags(major) builds, by name (setup.py records them next to the library)."""
  return [f"sm_{sm}" for sm in _machine_code(major)] + [f"compute_{PTX}"]


def arch_flags(major):
  """-gencode flags for an nvcc of this major version."""
  flags = []
  for sm in _machine_code(major):
    flags += ["-gencode", f"arch=compute_{sm},code=sm_{sm}"]
  return flags + ["-gencode", f"arch=compute_{PTX},code=compute_{PTX}"]


if __name__ == "__main__":
  print(cuda_home() if sys.argv[1:] == ["--home"] else " ".join(arch_flags(nvcc_major())))
