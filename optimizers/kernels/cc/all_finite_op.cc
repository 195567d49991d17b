// EmbedoptAllFinite: whether a tensor holds no NaN and no Inf, in one pass.
//
// The optimizer checks every gradient before it writes anything
// (optimizers/nonfinite.py). TensorFlow's `reduce_all(is_finite(x))` first
// writes a bool per element and then reads them back, on one thread; this
// reads the values once, in parallel, and keeps nothing.
#define EIGEN_USE_THREADS

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace embedopt {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;

REGISTER_OP("EmbedoptAllFinite")
    .Input("values: T")
    .Output("finite: bool")
    .Attr("T: {float, double, half, bfloat16}")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
True when no element of `values` is NaN or +-Inf (also for an empty tensor).
)doc");

// Whether the n values at x, each stored as the unsigned integer type U, are
// all finite: a value is NaN or Inf exactly when its exponent bits are all
// ones, so the largest magnitude bit pattern (sign cleared) decides, and an
// integer max reduction vectorises.
template <typename U>
inline bool AllFiniteBits(const void* x, int64_t n, U magnitude_mask, U exponent_mask) {
  const char* bytes = static_cast<const char*>(x);
  U largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    U bits;
    std::memcpy(&bits, bytes + i * sizeof(U), sizeof(U));
    largest = std::max<U>(largest, bits & magnitude_mask);
  }
  return largest < exponent_mask;
}

inline bool AllFiniteBlock(const float* x, int64_t n) { return AllFiniteBits<uint32_t>(x, n, 0x7fffffffu, 0x7f800000u); }
inline bool AllFiniteBlock(const double* x, int64_t n) {
  return AllFiniteBits<uint64_t>(x, n, 0x7fffffffffffffffull, 0x7ff0000000000000ull);
}
inline bool AllFiniteBlock(const Eigen::half* x, int64_t n) { return AllFiniteBits<uint16_t>(x, n, 0x7fffu, 0x7c00u); }
inline bool AllFiniteBlock(const Eigen::bfloat16* x, int64_t n) {
  return AllFiniteBits<uint16_t>(x, n, 0x7fffu, 0x7f80u);
}

template <typename T>
class AllFiniteOp : public OpKernel {
 public:
  explicit AllFiniteOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& values = ctx->input(0);
    const T* x = values.flat<T>().data();
    const int64_t n = values.NumElements();
    constexpr int64_t kBlock = 1 << 14;
    std::atomic<bool> finite{true};
    ParallelFor(ctx, (n + kBlock - 1) / kBlock, kBlock, [&](int64_t begin, int64_t end) {
      const int64_t stop = std::min(n, end * kBlock);
      if (!AllFiniteBlock(x + begin * kBlock, stop - begin * kBlock)) finite.store(false, std::memory_order_relaxed);
    });
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<bool>()() = finite.load();
  }
};

#define EMBEDOPT_REGISTER_ALL_FINITE(T) \
  REGISTER_KERNEL_BUILDER(Name("EmbedoptAllFinite").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
                          AllFiniteOp<T>)

EMBEDOPT_REGISTER_ALL_FINITE(float);
EMBEDOPT_REGISTER_ALL_FINITE(double);
EMBEDOPT_REGISTER_ALL_FINITE(Eigen::half);
EMBEDOPT_REGISTER_ALL_FINITE(Eigen::bfloat16);

}  // namespace embedopt
