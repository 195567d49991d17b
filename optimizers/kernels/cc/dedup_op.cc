// EmbedoptDedup: sums the rows of repeated ids, one row per distinct id.
#include "common.h"
#include "group_ids.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace embedopt {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("EmbedoptDedup")
    .Input("indices: Tindices")
    .Input("values: T")
    .Output("unique_indices: Tindices")
    .Output("summed: T")
    .Attr("T: {float, double, half, bfloat16}")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle indices, values, row;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &indices));
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(1), 1, &values));
      TF_RETURN_IF_ERROR(c->Merge(c->Vector(c->Dim(values, 0)), indices, &indices));
      TF_RETURN_IF_ERROR(c->Subshape(values, 1, &row));
      ShapeHandle summed;
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(c->UnknownDim()), row, &summed));
      c->set_output(0, c->Vector(c->UnknownDim()));
      c->set_output(1, summed);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Sums the rows of `values` whose `indices` are equal.

unique_indices: the distinct indices, ascending.
summed: row u is the sum, in input order, of the rows of `values` whose index
  is unique_indices[u]. Inputs whose indices are already strictly ascending
  are returned as they are.
)doc");

template <typename T, typename Tindex>
class DedupOp : public OpKernel {
 public:
  explicit DedupOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& indices = ctx->input(0);
    const Tensor& values = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckIdVector("indices", indices));
    const int64_t n = indices.NumElements();
    OP_REQUIRES(ctx, values.dims() >= 1 && values.dim_size(0) == n,
                absl::InvalidArgumentError(absl::StrCat("values must have shape [", n,
                                                        ", ...] (one row per index), got ",
                                                        values.shape().DebugString())));
    const Tindex* ids = indices.flat<Tindex>().data();
    if (OrderOf(ids, n) == IdOrder::kStrictlyAscending) {
      ctx->set_output(0, indices);
      ctx->set_output(1, values);
      return;
    }
    const IdGroups groups(ids, n, IntraOpPool{ctx});
    const int64_t num_unique = groups.size();
    const int64_t width = RowWidth(values);
    Tensor* unique_indices = nullptr;
    Tensor* summed = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_unique}), &unique_indices));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, WithRows(num_unique, values.shape()), &summed));
    Tindex* out_ids = unique_indices->flat<Tindex>().data();
    T* out_rows = summed->flat<T>().data();
    const T* rows = values.flat<T>().data();
    using C = ComputeType<T>;
    ParallelForGroups(groups, IntraOpPool{ctx}, width * 2, [&](int64_t begin, int64_t end) {
      std::vector<C> acc(std::is_same<T, C>::value ? 0 : width);
      for (int64_t u = begin; u < end; ++u) {
        out_ids[u] = ids[groups.Position(groups.Begin(u))];
        T* out = out_rows + u * width;
        if constexpr (std::is_same<T, C>::value) {
          SumGroupRows(groups, u, rows, width, out);
        } else {
          SumGroupRows(groups, u, rows, width, acc.data());
          StoreRow(acc.data(), width, out);
        }
      }
    });
  }
};

#define EMBEDOPT_REGISTER_DEDUP(T, Tindex)                                                             \
  REGISTER_KERNEL_BUILDER(                                                                           \
      Name("EmbedoptDedup").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T").TypeConstraint<Tindex>( \
          "Tindices"),                                                                               \
      DedupOp<T, Tindex>)

#define EMBEDOPT_REGISTER_DEDUP_T(T) \
  EMBEDOPT_REGISTER_DEDUP(T, int32_t);  \
  EMBEDOPT_REGISTER_DEDUP(T, int64_t)

EMBEDOPT_REGISTER_DEDUP_T(float);
EMBEDOPT_REGISTER_DEDUP_T(double);
EMBEDOPT_REGISTER_DEDUP_T(Eigen::half);
EMBEDOPT_REGISTER_DEDUP_T(Eigen::bfloat16);

}  // namespace embedopt
