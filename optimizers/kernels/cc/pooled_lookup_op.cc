// EmbedoptPooledLookup and its gradient: pooled (sum, mean, sqrtn) lookups of
// bags of ids in a resource variable, as fbgemm's table-batched embedding does.
#define EIGEN_USE_THREADS  // training_op_helpers.h copies tensors on the CPU device

#include <cmath>
#include <string>
#include <vector>

#include "common.h"
#include "group_ids.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace embedopt {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
using CPUDevice = Eigen::ThreadPoolDevice;

REGISTER_OP("EmbedoptPooledLookup")
    .Input("table: resource")
    .Input("ids: Tindices")
    .Input("row_splits: int64")
    .Input("weights: T")
    .Output("pooled: T")
    .Attr("T: {float, double, half, bfloat16}")
    .Attr("Tindices: {int32, int64}")
    .Attr("combiner: {'sum', 'mean', 'sqrtn'} = 'sum'")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle ids, splits, weights, row = c->UnknownShape();
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &ids));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &splits));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &weights));
      const auto* handle = c->input_handle_shapes_and_types(0);
      if (handle != nullptr && handle->size() == 1) {
        ShapeHandle table;
        TF_RETURN_IF_ERROR(c->WithRankAtLeast((*handle)[0].shape, 1, &table));
        TF_RETURN_IF_ERROR(c->Subshape(table, 1, &row));
      }
      ::tensorflow::shape_inference::DimensionHandle bags;
      TF_RETURN_IF_ERROR(c->Subtract(c->Dim(splits, 0), 1, &bags));
      ShapeHandle pooled;
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(bags), row, &pooled));
      c->set_output(0, pooled);
      return absl::OkStatus();
    });

REGISTER_OP("EmbedoptPooledLookupGrad")
    .Input("upstream: T")
    .Input("ids: Tindices")
    .Input("row_splits: int64")
    .Input("weights: T")
    .Input("num_rows: int64")
    .Output("unique_ids: Tindices")
    .Output("summed: T")
    .Attr("T: {float, double, half, bfloat16}")
    .Attr("Tindices: {int32, int64}")
    .Attr("combiner: {'sum', 'mean', 'sqrtn'} = 'sum'")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle upstream, row, summed, unused;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &upstream));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 0, &unused));
      TF_RETURN_IF_ERROR(c->Subshape(upstream, 1, &row));
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(c->UnknownDim()), row, &summed));
      c->set_output(0, c->Vector(c->UnknownDim()));
      c->set_output(1, summed);
      return absl::OkStatus();
    });

enum class Combiner { kSum, kMean, kSqrtn };

// The bags of a lookup: ids[splits[b] .. splits[b+1]) pool into output row b,
// each id weighted by weights[n] (1 when there are no weights).
template <typename T, typename Tindex>
struct Bags {
  const Tindex* ids;
  const int64_t* splits;
  const T* weights;  // nullptr: unweighted
  int64_t num_ids;
  int64_t num_bags;
  Combiner combiner;

  absl::Status Init(const Tensor& ids_t, const Tensor& splits_t, const Tensor& weights_t) {
    TF_RETURN_IF_ERROR(CheckIdVector("ids", ids_t));
    num_ids = ids_t.NumElements();
    if (splits_t.dims() != 1 || splits_t.NumElements() < 1) {
      return absl::InvalidArgumentError(absl::StrCat("row_splits must be a vector of num_bags + 1 offsets, got shape ",
                                                     splits_t.shape().DebugString()));
    }
    num_bags = splits_t.NumElements() - 1;
    splits = splits_t.flat<int64_t>().data();
    if (splits[0] != 0 || splits[num_bags] != num_ids) {
      return absl::InvalidArgumentError(absl::StrCat("row_splits must start at 0 and end at len(ids) = ", num_ids,
                                                     ", got ", splits[0], " and ", splits[num_bags]));
    }
    for (int64_t b = 0; b < num_bags; ++b) {
      if (splits[b + 1] < splits[b]) {
        return absl::InvalidArgumentError(absl::StrCat("row_splits must be non-decreasing, got row_splits[", b,
                                                       "] = ", splits[b], " > row_splits[", b + 1,
                                                       "] = ", splits[b + 1]));
      }
    }
    if (weights_t.dims() != 1 || (weights_t.NumElements() != 0 && weights_t.NumElements() != num_ids)) {
      return absl::InvalidArgumentError(absl::StrCat("weights must have shape [", num_ids,
                                                     "] (one per id) or [0] (unweighted), got ",
                                                     weights_t.shape().DebugString()));
    }
    ids = ids_t.flat<Tindex>().data();
    weights = weights_t.NumElements() == 0 ? nullptr : weights_t.flat<T>().data();
    return absl::OkStatus();
  }

  template <typename C>
  C Weight(int64_t n) const {
    return weights ? static_cast<C>(weights[n]) : C(1);
  }

  // The divisor of bag b: 1 (sum), the sum of its weights (mean) or the
  // square root of the sum of their squares (sqrtn); 0 makes the bag zero,
  // as tf.nn.embedding_lookup_sparse's div_no_nan does.
  template <typename C>
  C Divisor(int64_t b) const {
    if (combiner == Combiner::kSum) return C(1);
    C total = 0;
    for (int64_t n = splits[b]; n < splits[b + 1]; ++n) {
      const C w = Weight<C>(n);
      total += combiner == Combiner::kMean ? w : w * w;
    }
    return combiner == Combiner::kMean ? total : std::sqrt(total);
  }
};

// The registered attr only allows the three names.
inline Combiner ParseCombiner(OpKernelConstruction* ctx) {
  std::string name;
  if (!ctx->GetAttr("combiner", &name).ok()) return Combiner::kSum;
  return name == "mean" ? Combiner::kMean : name == "sqrtn" ? Combiner::kSqrtn : Combiner::kSum;
}

template <typename T, typename Tindex>
class PooledLookupOp : public OpKernel {
 public:
  explicit PooledLookupOp(OpKernelConstruction* ctx) : OpKernel(ctx), combiner_(ParseCombiner(ctx)) {}

  void Compute(OpKernelContext* ctx) override {
    Bags<T, Tindex> bags{};
    bags.combiner = combiner_;
    OP_REQUIRES_OK(ctx, bags.Init(ctx->input(1), ctx->input(2), ctx->input(3)));
    OP_REQUIRES_OK(ctx, CheckVariable<T>(ctx, 0, "table"));
    tensorflow::core::RefCountPtr<tensorflow::Var> var;
    OP_REQUIRES_OK(ctx, tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, 0), &var));
    // As ResourceGather: rows are read in place under a shared lock, so the
    // table is never copied into a tensor (which would make the next in-place
    // update copy the whole table).
    OP_REQUIRES_OK(ctx, tensorflow::EnsureSparseVariableAccess<CPUDevice, T>(ctx, var.get()));
    tsl::tf_shared_lock lock(*var->mu());
    const Tensor& table = *var->tensor();
    OP_REQUIRES(ctx, table.dims() >= 1,
                absl::InvalidArgumentError(absl::StrCat("table must have rank >= 1, got shape ",
                                                        table.shape().DebugString())));
    const int64_t rows = table.dim_size(0);
    const int64_t bad = FirstOutOfRange(bags.ids, bags.num_ids, rows);
    OP_REQUIRES(ctx, bad < 0, OutOfRange("ids", bad, static_cast<int64_t>(bags.ids[bad]), rows, "table"));
    Tensor* pooled = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, WithRows(bags.num_bags, table.shape()), &pooled));
    const int64_t width = RowWidth(table);
    const T* rows_data = table.flat<T>().data();
    T* out = pooled->flat<T>().data();
    using C = ComputeType<T>;
    const int64_t cost = (bags.num_ids / std::max<int64_t>(bags.num_bags, 1) + 1) * width * 3;
    ParallelFor(ctx, bags.num_bags, cost, [&](int64_t begin, int64_t end) {
      std::vector<C> acc(width);
      for (int64_t b = begin; b < end; ++b) {
        std::fill(acc.begin(), acc.end(), C(0));
        for (int64_t n = bags.splits[b]; n < bags.splits[b + 1]; ++n) {
          if (n + kPrefetchAhead < bags.num_ids) {
            PrefetchRow(rows_data + static_cast<int64_t>(bags.ids[n + kPrefetchAhead]) * width, width);
          }
          const C w = bags.template Weight<C>(n);
          const T* row = rows_data + static_cast<int64_t>(bags.ids[n]) * width;
          for (int64_t i = 0; i < width; ++i) acc[i] += w * static_cast<C>(row[i]);
        }
        const C divisor = bags.template Divisor<C>(b);
        T* dst = out + b * width;
        for (int64_t i = 0; i < width; ++i) dst[i] = static_cast<T>(divisor == C(0) ? C(0) : acc[i] / divisor);
      }
    });
  }

 private:
  const Combiner combiner_;
};

template <typename T, typename Tindex>
class PooledLookupGradOp : public OpKernel {
 public:
  explicit PooledLookupGradOp(OpKernelConstruction* ctx) : OpKernel(ctx), combiner_(ParseCombiner(ctx)) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& upstream = ctx->input(0);
    const Tensor& num_rows_t = ctx->input(4);
    Bags<T, Tindex> bags{};
    bags.combiner = combiner_;
    OP_REQUIRES_OK(ctx, bags.Init(ctx->input(1), ctx->input(2), ctx->input(3)));
    OP_REQUIRES(ctx, upstream.dims() >= 1 && upstream.dim_size(0) == bags.num_bags,
                absl::InvalidArgumentError(absl::StrCat("upstream must have shape [", bags.num_bags,
                                                        ", ...] (one row per bag), got ",
                                                        upstream.shape().DebugString())));
    OP_REQUIRES(ctx, tensorflow::TensorShapeUtils::IsScalar(num_rows_t.shape()),
                absl::InvalidArgumentError(absl::StrCat("num_rows must be a scalar, got shape ",
                                                        num_rows_t.shape().DebugString())));
    const int64_t rows = num_rows_t.scalar<int64_t>()();
    const int64_t bad = FirstOutOfRange(bags.ids, bags.num_ids, rows);
    OP_REQUIRES(ctx, bad < 0, OutOfRange("ids", bad, static_cast<int64_t>(bags.ids[bad]), rows, "the table"));
    using C = ComputeType<T>;
    const int64_t n = bags.num_ids;
    // Each id's bag and each bag's divisor, so that the sums below read one
    // upstream row (and, if weighted, one weight) per occurrence.
    ScratchBuffer<uint32_t> bag_of(n, /*slot=*/1);  // slot 0 holds the groups' starts
    ScratchBuffer<C> divisors(bags.num_bags, /*slot=*/0);
    ParallelFor(ctx, bags.num_bags, bags.num_ids / std::max<int64_t>(bags.num_bags, 1) * 4 + 20,
                [&](int64_t begin, int64_t end) {
                  for (int64_t b = begin; b < end; ++b) {
                    divisors[b] = bags.template Divisor<C>(b);
                    for (int64_t k = bags.splits[b]; k < bags.splits[b + 1]; ++k) bag_of[k] = static_cast<uint32_t>(b);
                  }
                });
    const IdGroups groups(bags.ids, n, IntraOpPool{ctx});
    const int64_t num_unique = groups.size();
    Tensor* unique_ids = nullptr;
    Tensor* summed = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_unique}), &unique_ids));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, WithRows(num_unique, upstream.shape()), &summed));
    const int64_t width = RowWidth(upstream);
    const T* up = upstream.flat<T>().data();
    Tindex* out_ids = unique_ids->flat<Tindex>().data();
    T* out = summed->flat<T>().data();
    ParallelForGroups(groups, IntraOpPool{ctx}, width * 3, [&](int64_t begin, int64_t end) {
      std::vector<C> acc(width);
      for (int64_t u = begin; u < end; ++u) {
        std::fill(acc.begin(), acc.end(), C(0));
        for (int64_t k = groups.Begin(u); k < groups.End(u); ++k) {
          const int64_t p = groups.Position(k);
          const int64_t b = bag_of[p];
          if (divisors[b] == C(0)) continue;  // the bag's output is zero, whatever its rows
          const C f = bags.template Weight<C>(p) / divisors[b];
          const T* row = up + b * width;
          for (int64_t i = 0; i < width; ++i) acc[i] += f * static_cast<C>(row[i]);
        }
        out_ids[u] = bags.ids[groups.Position(groups.Begin(u))];
        StoreRow(acc.data(), width, out + u * width);
      }
    });
  }

 private:
  const Combiner combiner_;
};

#define EMBEDOPT_REGISTER_POOLED(T, Tindex)                                                                 \
  REGISTER_KERNEL_BUILDER(                                                                                \
      Name("EmbedoptPooledLookup").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T").TypeConstraint<Tindex>( \
          "Tindices"),                                                                                    \
      PooledLookupOp<T, Tindex>);                                                                         \
  REGISTER_KERNEL_BUILDER(Name("EmbedoptPooledLookupGrad")                                                \
                              .Device(::tensorflow::DEVICE_CPU)                                           \
                              .TypeConstraint<T>("T")                                                     \
                              .TypeConstraint<Tindex>("Tindices")                                         \
                              .HostMemory("num_rows"),                                                    \
                          PooledLookupGradOp<T, Tindex>)

#define EMBEDOPT_REGISTER_POOLED_T(T) \
  EMBEDOPT_REGISTER_POOLED(T, int32_t); \
  EMBEDOPT_REGISTER_POOLED(T, int64_t)

EMBEDOPT_REGISTER_POOLED_T(float);
EMBEDOPT_REGISTER_POOLED_T(double);
EMBEDOPT_REGISTER_POOLED_T(Eigen::half);
EMBEDOPT_REGISTER_POOLED_T(Eigen::bfloat16);

}  // namespace embedopt
