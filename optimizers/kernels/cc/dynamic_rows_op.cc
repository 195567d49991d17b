// EmbedoptFillRows, a row helper of DynamicEmbedding's kernel path: sets rows
// of variables (an optimizer's slots) to one value each in place, where a
// scatter of a scalar walks element by element and a broadcast first writes
// the whole [rows, dim] block.
#define EIGEN_USE_THREADS

#include <cstdint>
#include <vector>

#include "common.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace embedopt {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::shape_inference::InferenceContext;

REGISTER_OP("EmbedoptFillRows")
    .Input("vars: N * resource")
    .Input("rows: int64")
    .Input("values: N * T")
    .Attr("N: int >= 1")
    .Attr("T: {float, double, half, bfloat16}")
    .SetShapeFn(::tensorflow::shape_inference::NoOutputs)
    .Doc("Sets every element of vars[k][rows[i]] to the scalar values[k], in place, in one pass over the rows.");

template <typename T>
class FillRowsOp : public OpKernel {
 public:
  explicit FillRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) { OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_)); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& rows_in = ctx->input(num_);
    OP_REQUIRES_OK(ctx, CheckIdVector("rows", rows_in));
    std::vector<int> ids(num_);
    for (int k = 0; k < num_; ++k) {
      ids[k] = k;
      OP_REQUIRES_OK(ctx, CheckVariable<T>(ctx, k, "vars"));
      const Tensor& value_in = ctx->input(num_ + 1 + k);
      OP_REQUIRES(ctx, ::tensorflow::TensorShapeUtils::IsScalar(value_in.shape()),
                  absl::InvalidArgumentError(
                      absl::StrCat("values must be scalars, got shape ", value_in.shape().DebugString())));
    }
    auto locks = ::tensorflow::MaybeLockVariableInputMutexesInOrder<Eigen::ThreadPoolDevice, T>(
        ctx, /*do_lock=*/false, /*sparse=*/true, ids);
    const int64_t n = rows_in.NumElements();
    const int64_t* rows = rows_in.flat<int64_t>().data();
    std::vector<T*> data(num_);
    std::vector<int64_t> width(num_);
    std::vector<T> value(num_);
    for (int k = 0; k < num_; ++k) {
      Tensor var;
      OP_REQUIRES_OK(ctx, ::tensorflow::GetInputTensorFromVariable<Eigen::ThreadPoolDevice, T>(
                              ctx, k, /*lock_held=*/false, /*sparse=*/true, &var));
      OP_REQUIRES(ctx, var.dims() >= 1,
                  absl::InvalidArgumentError(absl::StrCat("vars[", k, "] must have rank >= 1, got shape ",
                                                          var.shape().DebugString())));
      const int64_t bad = FirstOutOfRange(rows, n, var.dim_size(0));
      OP_REQUIRES(ctx, bad < 0, OutOfRange("rows", bad, bad < 0 ? 0 : rows[bad], var.dim_size(0), "var"));
      data[k] = var.flat<T>().data();
      width[k] = RowWidth(var);
      value[k] = ctx->input(num_ + 1 + k).scalar<T>()();
    }
    int64_t cost = 0;
    for (int64_t w : width) cost += 2 * w;
    ParallelFor(ctx, n, cost, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int k = 0; k < num_; ++k) {
          // Scattered rows: each write would first wait for its row's lines; ask for them a few rows ahead.
          if (i + kFarAhead < end) {
            PrefetchRow(data[k] + rows[i + kFarAhead] * width[k], width[k], /*for_write=*/true);
          }
          std::fill(data[k] + rows[i] * width[k], data[k] + (rows[i] + 1) * width[k], value[k]);
        }
      }
    });
  }

 private:
  int num_ = 1;
};

#define EMBEDOPT_REGISTER_FILL_ROWS(T) \
  REGISTER_KERNEL_BUILDER(             \
      Name("EmbedoptFillRows").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), FillRowsOp<T>)
EMBEDOPT_REGISTER_FILL_ROWS(float);
EMBEDOPT_REGISTER_FILL_ROWS(double);
EMBEDOPT_REGISTER_FILL_ROWS(Eigen::half);
EMBEDOPT_REGISTER_FILL_ROWS(Eigen::bfloat16);

}  // namespace embedopt
