# One place for the commands the README gives. A fresh machine needs only Python 3.11, g++ and
# (for the CUDA compile check) nvcc: `make setup` creates .venv/ with the pinned versions and
# builds the op library into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.requirements-installed
OP_LIBRARY := tfinvconv/ops/_inverse_conv_ops.so
OP_SOURCES := $(wildcard custom_ops/inverse_conv/core/*.h custom_ops/inverse_conv/core/*.cc \
                        custom_ops/inverse_conv/tf/*.cc) setup.py
NVCC_ARCH := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
export TF_CPP_MIN_LOG_LEVEL ?= 2

HOROVOD := $(VENV)/.horovod-installed
HOROVOD_VERSION := 0.28.1

.PHONY: setup demo train test bench bench-quick cuda-check gpu-selftest horovod clean

setup: $(OP_LIBRARY)

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	# tf-keras declares `tensorflow`; --no-deps keeps the GPU wheel out (toolchain note).
	$(PY) -m pip install -q --no-deps tf-keras==2.21.0
	touch $@

$(OP_LIBRARY): $(INSTALLED) $(OP_SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# The main job: train the digits preset (a few minutes on 2 cores), write samples and metrics.
train: setup
	$(PY) -m train --preset digits --run-dir runs/digits

# A short op demo: invert a random layer, print the reconstruction error and timing.
demo: setup
	$(PY) examples/invert_layer.py

# Horovod 0.28.1 (its last release) for this TensorFlow, CPU/Gloo build (../shared/notes/
# horovod.md): unpatched it only builds against TF <= 2.18; its XLA file includes headers TF
# 2.21 no longer ships, and everything in that file past the includes is GPU-only, so the
# file's guard is extended to require HAVE_GPU. The wheel is cached in build/wheels.
horovod: $(HOROVOD)

$(HOROVOD): $(OP_LIBRARY)
	mkdir -p build/horovod build/wheels
	if ! ls build/wheels/horovod-$(HOROVOD_VERSION)-*.whl >/dev/null 2>&1; then \
	  rm -rf build/horovod/* && \
	  $(PY) -m pip download -q --no-deps --no-binary :all: horovod==$(HOROVOD_VERSION) \
	    -d build/horovod && \
	  tar xzf build/horovod/horovod-$(HOROVOD_VERSION).tar.gz -C build/horovod && \
	  sed -i 's/^#if TENSORFLOW_VERSION >= 2006000000$$/#if TENSORFLOW_VERSION >= 2006000000 \&\& HAVE_GPU/' \
	    build/horovod/horovod-$(HOROVOD_VERSION)/horovod/tensorflow/xla_mpi_ops.cc && \
	  grep -q "2006000000 && HAVE_GPU" \
	    build/horovod/horovod-$(HOROVOD_VERSION)/horovod/tensorflow/xla_mpi_ops.cc && \
	  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=-j2 \
	  $(PY) -m pip wheel -q --no-build-isolation --no-deps \
	    build/horovod/horovod-$(HOROVOD_VERSION) -w build/wheels; \
	fi
	$(PY) -m pip install -q cloudpickle psutil pyyaml packaging
	$(PY) -m pip install -q --no-deps --force-reinstall build/wheels/horovod-$(HOROVOD_VERSION)-*.whl
	$(PY) -c "import horovod, horovod.tensorflow as hvd; hvd.init(); print('horovod', horovod.__version__, 'size', hvd.size())"
	touch $@

test: setup horovod
	$(PY) -m pytest -q tests

# Every benchmark table (results in benchmarks/results/); bench-quick is CI's smoke run.
bench: setup
	$(PY) -m benchmarks

bench-quick: setup
	$(PY) -m benchmarks --quick

# Compile-only check of every CUDA source (there is no GPU here): the framework-free core and
# self-test, and the TF wrapper with GOOGLE_CUDA on (TF's GPU headers need the CUDA shim).
cuda-check: setup
	custom_ops/inverse_conv/selftest/run_selftest.sh --compile-only
	rm -rf build/cuda_shim && mkdir -p build/cuda_shim/third_party/gpus/cuda build/cuda-check
	ln -s "$$(dirname "$$(dirname "$$(readlink -f "$$(which nvcc)")")")/include" \
	  build/cuda_shim/third_party/gpus/cuda/include
	nvcc -c -x cu -std=c++17 -DGOOGLE_CUDA=1 --expt-relaxed-constexpr -Xcompiler -fPIC \
	  -Xcompiler -Wno-deprecated-declarations $(NVCC_ARCH) -I. -Ibuild/cuda_shim \
	  $$($(PY) -c 'import tensorflow as tf; print(*tf.sysconfig.get_compile_flags())') \
	  custom_ops/inverse_conv/tf/inverse_conv_ops.cc -o build/cuda-check/inverse_conv_ops.o \
	  > build/cuda-check/nvcc.log 2>&1 || (grep -B2 -A2 "error" build/cuda-check/nvcc.log; exit 1)
	@echo "CUDA sources compile for sm_80 and sm_90"

# On a machine with a GPU and a CUDA toolkit: correctness against the CPU core, and timings.
gpu-selftest:
	custom_ops/inverse_conv/selftest/run_selftest.sh

clean:
	rm -rf build $(OP_LIBRARY) custom_ops/inverse_conv/selftest/build *.egg-info
