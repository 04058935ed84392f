"""The one list of GPU targets, for setup.py and the Makefile (`python cuda_arch.py` prints flags).

Machine code for every architecture the toolkit still supports from sm_70 (V100) to sm_90 (H100),
plus PTX for compute_90 so that newer GPUs JIT-compile it. CUDA 13 dropped sm_70 (its lowest
target is sm_75); with CUDA 12 (TensorFlow 2.21's own toolkit) sm_70 is built too.
"""

import re
import shutil
import subprocess

MACHINE_CODE = (70, 75, 80, 86, 89, 90)
PTX = 90


def nvcc_major(nvcc="nvcc"):
  if shutil.which(nvcc) is None:
    return None
  out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
  match = re.search(r"release (\d+)\.", out)
  return int(match.group(1)) if match else None


def arch_flags(major):
  """-gencode flags for an nvcc of this major version."""
  lowest = 75 if major is not None and major >= 13 else 70
  flags = []
  for sm in MACHINE_CODE:
    if sm >= lowest:
      flags += ["-gencode", f"arch=compute_{sm},code=sm_{sm}"]
  return flags + ["-gencode", f"arch=compute_{PTX},code=compute_{PTX}"]


if __name__ == "__main__":
  print(" ".join(arch_flags(nvcc_major())))
