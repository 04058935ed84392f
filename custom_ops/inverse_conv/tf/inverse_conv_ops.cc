// TensorFlow wrapper around the framework-free core: op registration, shape function, input
// validation and the CPU / GPU kernels. No math lives here.
#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <string>

#include "custom_ops/inverse_conv/core/inverse_conv.h"
#if GOOGLE_CUDA
#include "custom_ops/inverse_conv/core/inverse_conv_gpu.h"
#endif
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfinvconv {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::errors::InvalidArgument;
namespace shape_inference = ::tensorflow::shape_inference;
using CpuDevice = Eigen::ThreadPoolDevice;

Status SolveShapeFn(shape_inference::InferenceContext* c) {
  shape_inference::ShapeHandle rhs, kernel;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &rhs));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &kernel));
  shape_inference::DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(kernel, 0), c->Dim(kernel, 1), &unused));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(kernel, 2), c->Dim(kernel, 3), &unused));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(rhs, 3), c->Dim(kernel, 2), &unused));
  c->set_output(0, c->input(0));
  return ::tensorflow::OkStatus();
}

// Everything that does not need the kernel's values; fills `shape`.
Status ValidateInputs(const Tensor& rhs, const Tensor& kernel, SolveShape* shape) {
  if (rhs.dims() != 4)
    return InvalidArgument("input must be rank 4 [batch, height, width, channels], got shape ",
                           rhs.shape().DebugString());
  if (kernel.dims() != 4)
    return InvalidArgument("kernel must be rank 4 [k, k, channels, channels], got shape ",
                           kernel.shape().DebugString());
  if (kernel.dim_size(0) != kernel.dim_size(1))
    return InvalidArgument("kernel must be square (k x k), got shape ",
                           kernel.shape().DebugString());
  if (kernel.dim_size(2) != kernel.dim_size(3) || kernel.dim_size(2) != rhs.dim_size(3))
    return InvalidArgument("channel mismatch: input has ", rhs.dim_size(3),
                           " channels but kernel has shape ", kernel.shape().DebugString(),
                           " (expected [k, k, channels, channels])");
  shape->batch = rhs.dim_size(0);
  shape->height = rhs.dim_size(1);
  shape->width = rhs.dim_size(2);
  shape->channels = rhs.dim_size(3);
  shape->ksize = kernel.dim_size(0);
  const std::string problem = ValidateShape(*shape);
  if (!problem.empty()) return InvalidArgument(problem);
  return ::tensorflow::OkStatus();
}

Status SingularKernelError(int64_t channel) {
  return InvalidArgument("singular kernel: the same-pixel diagonal entry for channel ", channel,
                         " is zero (or NaN), so the causal convolution has no inverse");
}

// The CPU path the solve runs (baseline, avx2, ...), or why the requested one cannot run.
Status CpuPathStatus() {
  const std::string& error = ChosenCpuPath().error;
  return error.empty() ? ::tensorflow::OkStatus() : InvalidArgument(error);
}

// One launcher per device, so the op class below is written once.
template <typename Device, typename T>
struct SolveLauncher;

template <typename T>
struct SolveLauncher<CpuDevice, T> {
  static Status Run(OpKernelContext* ctx, const SolveShape& shape, const T* rhs, const T* kernel,
                    Corner corner, bool adjoint, T* out) {
    const int64_t singular = FindSingularChannel(shape, kernel);
    if (singular >= 0) return SingularKernelError(singular);
    TF_RETURN_IF_ERROR(CpuPathStatus());
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    ParallelFor parallel_for = [pool](int64_t total, int64_t cost,
                                      const std::function<void(int64_t, int64_t)>& fn) {
      pool->ParallelFor(total, cost, fn);
    };
    CausalSolveCpu(shape, rhs, kernel, corner, adjoint, out, parallel_for);
    return ::tensorflow::OkStatus();
  }
};

#if GOOGLE_CUDA
using GpuDevice = Eigen::GpuDevice;

// No host synchronisation: a singular kernel cannot be reported from here without one, so the
// core makes the whole output NaN instead (inverse_conv_gpu.h).
template <typename T>
struct SolveLauncher<GpuDevice, T> {
  static Status Run(OpKernelContext* ctx, const SolveShape& shape, const T* rhs, const T* kernel,
                    Corner corner, bool adjoint, T* out) {
    if (shape.num_pixels() == 0) return ::tensorflow::OkStatus();
    GpuLimits limits;
    int err = QueryGpuLimits(&limits);
    if (err != 0) return ::tensorflow::errors::Internal("querying the GPU: ", DescribeGpuError(err));
    const GpuSolvePlan plan = PlanGpuSolve(shape, sizeof(T), limits);
    if (!plan.feasible)
      return InvalidArgument("the GPU solve needs a tile of at least (2k-2)^2 pixels x ",
                             shape.channels, " channels in shared memory, more than this GPU's ",
                             limits.max_shared_per_block, " bytes; use a smaller kernel, fewer "
                             "channels or float32, or run the op on the CPU");
    Tensor scratch;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(::tensorflow::DT_INT8,
                                          ::tensorflow::TensorShape({plan.scratch_bytes}),
                                          &scratch));
    void* stream = reinterpret_cast<void*>(ctx->eigen_device<GpuDevice>().stream());
    err = CausalSolveGpu(shape, plan, rhs, kernel, corner, adjoint, out,
                         scratch.flat<int8_t>().data(), stream);
    if (err != 0) return ::tensorflow::errors::Internal("the causal solve: ", DescribeGpuError(err));
    return ::tensorflow::OkStatus();
  }
};
#endif  // GOOGLE_CUDA

template <typename Device, typename T>
class InverseCausalConv2DOp : public OpKernel {
 public:
  explicit InverseCausalConv2DOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string corner;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("corner", &corner));
    OP_REQUIRES(ctx, ParseCorner(corner, &corner_), InvalidArgument("unknown corner ", corner));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("adjoint", &adjoint_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& rhs = ctx->input(0);
    const Tensor& kernel = ctx->input(1);
    SolveShape shape;
    OP_REQUIRES_OK(ctx, ValidateInputs(rhs, kernel, &shape));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, rhs.shape(), &out));
    OP_REQUIRES_OK(ctx, SolveLauncher<Device, T>::Run(ctx, shape, rhs.flat<T>().data(),
                                                      kernel.flat<T>().data(), corner_, adjoint_,
                                                      out->flat<T>().data()));
  }

 private:
  Corner corner_ = Corner::kTopLeft;
  bool adjoint_ = false;
};

// Reports the CPU path as a string scalar, so Python and tests can see which code ran.
class CpuPathOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    OP_REQUIRES_OK(ctx, CpuPathStatus());
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ::tensorflow::TensorShape({}), &out));
    out->scalar<::tensorflow::tstring>()() = ChosenCpuPath().name;
  }
};

}  // namespace

REGISTER_OP("TfInvConv>CpuPath")
    .Output("path: string")
    .SetShapeFn(shape_inference::ScalarShape)
    .Doc("The instruction set the CPU solve runs: TFINVCONV_CPU_PATH, or the widest this CPU has.");
REGISTER_KERNEL_BUILDER(Name("TfInvConv>CpuPath").Device(::tensorflow::DEVICE_CPU), CpuPathOp);

REGISTER_OP("TfInvConv>InverseCausalConv2D")
    .Input("rhs: T")
    .Input("kernel: T")
    .Output("solution: T")
    .Attr("T: {float, double}")
    .Attr("corner: {'top_left', 'top_right', 'bottom_left', 'bottom_right'} = 'top_left'")
    .Attr("adjoint: bool = false")
    .SetShapeFn(SolveShapeFn)
    .Doc(R"doc(
Solves the masked causal k x k convolution: solution = A^{-1} rhs, or A^{-T} rhs when adjoint.
rhs: [batch, height, width, channels]. kernel: [k, k, channels, channels] (HWIO); its same-pixel
tap is read only where input channel <= output channel and must have a nonzero diagonal (a zero
or NaN diagonal is an InvalidArgument error on the CPU; on the GPU, where checking would stall
the stream, it makes the whole solution NaN).
)doc");

#define TFINVCONV_REGISTER(DEVICE_NAME, DEVICE_TYPE, T)                            \
  REGISTER_KERNEL_BUILDER(Name("TfInvConv>InverseCausalConv2D")                    \
                              .Device(::tensorflow::DEVICE_NAME)                   \
                              .TypeConstraint<T>("T"),                             \
                          InverseCausalConv2DOp<DEVICE_TYPE, T>);
TFINVCONV_REGISTER(DEVICE_CPU, CpuDevice, float)
TFINVCONV_REGISTER(DEVICE_CPU, CpuDevice, double)
#if GOOGLE_CUDA
TFINVCONV_REGISTER(DEVICE_GPU, GpuDevice, float)
TFINVCONV_REGISTER(DEVICE_GPU, GpuDevice, double)
#endif
#undef TFINVCONV_REGISTER

}  // namespace tfinvconv
