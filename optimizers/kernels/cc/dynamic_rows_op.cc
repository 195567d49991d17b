// Small row helpers of DynamicEmbedding's kernel path, each replacing TF ops
// that cost milliseconds at 100k keys a step:
//
//   EmbedoptResidentBags  the bags of one (or none) that feed the pooled lookup:
//                         gather + compare + cumsum + boolean_mask in one pass;
//   EmbedoptSortRows      ascending sort of row numbers (the LRU log's append),
//                         a radix sort where tf.sort runs a top_k;
//   EmbedoptFillRows      sets rows of a variable (an optimizer slot) to one
//                         value in place, where a scatter of a scalar walks
//                         element by element and a broadcast first writes
//                         the whole [rows, dim] block.
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

REGISTER_OP("EmbedoptResidentBags")
    .Input("rows: int64")
    .Input("position: int32")
    .Output("ids: int64")
    .Output("row_splits: int64")
    .SetShapeFn([](InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle position;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &position));
      ::tensorflow::shape_inference::DimensionHandle bags;
      TF_RETURN_IF_ERROR(c->Add(c->Dim(position, 0), 1, &bags));
      c->set_output(0, c->Vector(c->UnknownDim()));
      c->set_output(1, c->Vector(bags));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Bag i holds the row rows[position[i]] when it is >= 0, else nothing.

ids: the rows of the non-empty bags, in bag order.
row_splits: bag i is ids[row_splits[i]:row_splits[i + 1]].
)doc");

class ResidentBagsOp : public OpKernel {
 public:
  explicit ResidentBagsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& rows_in = ctx->input(0);
    const Tensor& position_in = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckIdVector("rows", rows_in));
    OP_REQUIRES_OK(ctx, CheckIdVector("position", position_in));
    const int64_t u = rows_in.NumElements(), n = position_in.NumElements();
    const int64_t* rows = rows_in.flat<int64_t>().data();
    const int32_t* position = position_in.flat<int32_t>().data();
    const int64_t bad = FirstOutOfRange(position, n, u);
    OP_REQUIRES(ctx, bad < 0, OutOfRange("position", bad, bad < 0 ? 0 : position[bad], u, "rows"));
    Tensor* splits_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({n + 1}), &splits_out));
    int64_t* splits = splits_out->flat<int64_t>().data();
    splits[0] = 0;
    for (int64_t i = 0; i < n; ++i) splits[i + 1] = splits[i] + (rows[position[i]] >= 0);
    Tensor* ids_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({splits[n]}), &ids_out));
    int64_t* ids = ids_out->flat<int64_t>().data();
    for (int64_t i = 0, k = 0; i < n; ++i) {
      const int64_t row = rows[position[i]];
      if (row >= 0) ids[k++] = row;
    }
  }
};
REGISTER_KERNEL_BUILDER(Name("EmbedoptResidentBags").Device(::tensorflow::DEVICE_CPU), ResidentBagsOp);

REGISTER_OP("EmbedoptSortRows")
    .Input("rows: int64")
    .Output("sorted: int64")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc("`rows` (each >= 0) in ascending order.");

class SortRowsOp : public OpKernel {
 public:
  explicit SortRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& rows_in = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckIdVector("rows", rows_in));
    const int64_t n = rows_in.NumElements();
    const int64_t* rows = rows_in.flat<int64_t>().data();
    int64_t largest = 0;
    for (int64_t i = 0; i < n; ++i) {
      OP_REQUIRES(ctx, rows[i] >= 0, absl::InvalidArgumentError(absl::StrCat("rows[", i, "] = ", rows[i], " < 0")));
      largest = std::max(largest, rows[i]);
    }
    Tensor* sorted_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, rows_in.shape(), &sorted_out));
    int64_t* sorted = sorted_out->flat<int64_t>().data();
    // LSD radix sort, 11 bits a pass: rows below 2^22 (4M) take two passes.
    constexpr int kBits = 11;
    std::vector<int64_t> buffer(n);
    const int64_t* from = rows;
    int passes = 0;
    for (int shift = 0; shift == 0 || (largest >> shift) != 0; shift += kBits) ++passes;
    // Each pass writes into the other array; start so that the last pass lands in `sorted`.
    int64_t* to = passes % 2 == 1 ? sorted : buffer.data();
    for (int pass = 0, shift = 0; pass < passes; ++pass, shift += kBits) {
      int64_t count[(1 << kBits) + 1] = {0};
      for (int64_t i = 0; i < n; ++i) ++count[((from[i] >> shift) & ((1 << kBits) - 1)) + 1];
      for (int d = 0; d < (1 << kBits); ++d) count[d + 1] += count[d];
      for (int64_t i = 0; i < n; ++i) to[count[(from[i] >> shift) & ((1 << kBits) - 1)]++] = from[i];
      from = to;
      to = to == sorted ? buffer.data() : sorted;
    }
    if (n > 0 && from != sorted) std::copy(from, from + n, sorted);
  }
};
REGISTER_KERNEL_BUILDER(Name("EmbedoptSortRows").Device(::tensorflow::DEVICE_CPU), SortRowsOp);

REGISTER_OP("EmbedoptFillRows")
    .Input("var: resource")
    .Input("rows: int64")
    .Input("value: T")
    .Attr("T: {float, double, half, bfloat16}")
    .SetShapeFn(::tensorflow::shape_inference::NoOutputs)
    .Doc("Sets every element of var[rows[i]] to the scalar `value`, in place.");

template <typename T>
class FillRowsOp : public OpKernel {
 public:
  explicit FillRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& rows_in = ctx->input(1);
    const Tensor& value_in = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckIdVector("rows", rows_in));
    OP_REQUIRES(ctx, ::tensorflow::TensorShapeUtils::IsScalar(value_in.shape()),
                absl::InvalidArgumentError(
                    absl::StrCat("value must be a scalar, got shape ", value_in.shape().DebugString())));
    OP_REQUIRES_OK(ctx, CheckVariable<T>(ctx, 0, "var"));
    auto locks = ::tensorflow::MaybeLockVariableInputMutexesInOrder<Eigen::ThreadPoolDevice, T>(
        ctx, /*do_lock=*/false, /*sparse=*/true, {0});
    Tensor var;
    OP_REQUIRES_OK(ctx, ::tensorflow::GetInputTensorFromVariable<Eigen::ThreadPoolDevice, T>(
                            ctx, 0, /*lock_held=*/false, /*sparse=*/true, &var));
    OP_REQUIRES(ctx, var.dims() >= 1,
                absl::InvalidArgumentError(absl::StrCat("var must have rank >= 1, got shape ",
                                                        var.shape().DebugString())));
    const int64_t n = rows_in.NumElements();
    const int64_t* rows = rows_in.flat<int64_t>().data();
    const int64_t bad = FirstOutOfRange(rows, n, var.dim_size(0));
    OP_REQUIRES(ctx, bad < 0, OutOfRange("rows", bad, bad < 0 ? 0 : rows[bad], var.dim_size(0), "var"));
    const int64_t width = RowWidth(var);
    const T value = value_in.scalar<T>()();
    T* data = var.flat<T>().data();
    ParallelFor(ctx, n, width * 2, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) std::fill(data + rows[i] * width, data + (rows[i] + 1) * width, value);
    });
  }
};

#define EMBEDOPT_REGISTER_FILL_ROWS(T) \
  REGISTER_KERNEL_BUILDER(             \
      Name("EmbedoptFillRows").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), FillRowsOp<T>)
EMBEDOPT_REGISTER_FILL_ROWS(float);
EMBEDOPT_REGISTER_FILL_ROWS(double);
EMBEDOPT_REGISTER_FILL_ROWS(Eigen::half);
EMBEDOPT_REGISTER_FILL_ROWS(Eigen::bfloat16);

}  // namespace embedopt
