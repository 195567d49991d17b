// EmbedoptPooledLookupGrad: the table's gradient of EmbedoptPooledLookup, with
// each id's contributions summed (deduplicated) and the ids ascending.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <memory>
#include <vector>

#include "bags.h"
#include "common.h"
#include "group_ids.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace embedopt {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("EmbedoptPooledLookupGrad")
    .Input("upstream: T")
    .Input("ids: Tindices")
    .Input("row_splits: int64")
    .Input("weights: T")
    .Input("num_rows: int64")
    .Input("order: int32")
    .Input("group_starts: int32")
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
      TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 1, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(6), 1, &unused));
      TF_RETURN_IF_ERROR(c->Subshape(upstream, 1, &row));
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(c->UnknownDim()), row, &summed));
      c->set_output(0, c->Vector(c->UnknownDim()));
      c->set_output(1, summed);
      return absl::OkStatus();
    });

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
    // The forward op's grouping of the ids when it is given (order, group_starts), else made here.
    const Tensor& order_t = ctx->input(5);
    const Tensor& starts_t = ctx->input(6);
    if (order_t.NumElements() == 0 && starts_t.NumElements() == 0) {
      const IdGroups groups(bags.ids, n, IntraOpPool{ctx});
      Accumulate(ctx, groups, bags, bag_of.get(), divisors.get(), upstream);
      return;
    }
    OP_REQUIRES_OK(ctx, CheckGrouping(order_t, starts_t, n));
    const GroupView view(order_t.flat<int32_t>().data(), starts_t.flat<int32_t>().data(), starts_t.NumElements() - 1);
    Accumulate(ctx, view, bags, bag_of.get(), divisors.get(), upstream);
  }

 private:
  // A grouping from EmbedoptPooledLookup: an order of the n positions and the starts of its groups.
  static absl::Status CheckGrouping(const Tensor& order, const Tensor& starts, int64_t n) {
    if (order.dims() != 1 || order.NumElements() != n || starts.dims() != 1 || starts.NumElements() < 1) {
      return absl::InvalidArgumentError(absl::StrCat("order must have shape [", n, "] and group_starts at least one "
                                                     "element (the lookup's own outputs), got ",
                                                     order.shape().DebugString(), " and ",
                                                     starts.shape().DebugString()));
    }
    const int32_t* s = starts.flat<int32_t>().data();
    const int64_t groups = starts.NumElements() - 1;
    if (s[0] != 0 || s[groups] != n) {
      return absl::InvalidArgumentError(absl::StrCat("group_starts must run from 0 to ", n));
    }
    for (int64_t u = 0; u < groups; ++u) {
      if (s[u + 1] <= s[u]) return absl::InvalidArgumentError("group_starts must be strictly increasing");
    }
    const int32_t* o = order.flat<int32_t>().data();
    for (int64_t k = 0; k < n; ++k) {
      if (o[k] < 0 || o[k] >= n) return absl::InvalidArgumentError(absl::StrCat("order[", k, "] is out of range"));
    }
    return absl::OkStatus();
  }

  template <typename Groups, typename C>
  void Accumulate(OpKernelContext* ctx, const Groups& groups, const Bags<T, Tindex>& bags, const uint32_t* bag_of,
                  const C* divisors, const Tensor& upstream) {
    const int64_t num_unique = groups.size();
    Tensor* unique_ids = nullptr;
    Tensor* summed = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_unique}), &unique_ids));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, WithRows(num_unique, upstream.shape()), &summed));
    const int64_t width = RowWidth(upstream);
    const T* up = upstream.flat<T>().data();
    Tindex* out_ids = unique_ids->flat<Tindex>().data();
    T* out = summed->flat<T>().data();
    if (bags.weights == nullptr) {
      AccumulateUnweighted(ctx, groups, bags, bag_of, divisors, up, width, out_ids, out);
      return;
    }
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

  // Without weights an occurrence's factor is its bag's (1 / divisor, exactly what Weight / divisor gives for
  // a weight of 1), so one pass first lays out each sorted position's bag in order; the sums then read one
  // sequential array and the upstream row, instead of position -> bag -> divisor -> row, three dependent
  // loads per occurrence. A sum pools with factor 1 and adds the rows as they are (1 * x is x).
  template <typename Groups, typename C>
  void AccumulateUnweighted(OpKernelContext* ctx, const Groups& groups, const Bags<T, Tindex>& bags,
                            const uint32_t* bag_of, const C* divisors, const T* up, int64_t width, Tindex* out_ids,
                            T* out) {
    const int64_t n = groups.num_ids();
    ScratchBuffer<uint32_t> sorted_bag(n, /*slot=*/0);
    ParallelFor(ctx, n, 4, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) sorted_bag[k] = bag_of[groups.Position(k)];
    });
    const bool plain_sum = combiner_ == Combiner::kSum;
    WithRowWidth(width, [&](auto fixed) {
      constexpr int64_t kWidth = decltype(fixed)::value;  // 0: only known at run time
      ParallelForGroups(groups, IntraOpPool{ctx}, width * 2, [&](int64_t begin, int64_t end) {
        const int64_t w = kWidth > 0 ? kWidth : width;
        C fixed_acc[kWidth > 0 ? kWidth : 1];
        std::vector<C> runtime_acc(kWidth > 0 ? 0 : width);
        C* acc = kWidth > 0 ? fixed_acc : runtime_acc.data();
        for (int64_t u = begin; u < end; ++u) {
          for (int64_t i = 0; i < w; ++i) acc[i] = C(0);
          for (int64_t k = groups.Begin(u); k < groups.End(u); ++k) {
            const uint32_t b = sorted_bag[k];
            const T* row = up + static_cast<int64_t>(b) * w;
            if (plain_sum) {
              for (int64_t i = 0; i < w; ++i) acc[i] += static_cast<C>(row[i]);
            } else {
              const C f = C(1) / divisors[b];  // an id's bag is never empty, so its divisor is not 0
              for (int64_t i = 0; i < w; ++i) acc[i] += f * static_cast<C>(row[i]);
            }
          }
          out_ids[u] = bags.ids[groups.Position(groups.Begin(u))];
          StoreRow(acc, w, out + u * w);
        }
      });
    });
  }

  const Combiner combiner_;
};

#define EMBEDOPT_REGISTER_POOLED_GRAD(T, Tindex)                                                         \
  REGISTER_KERNEL_BUILDER(Name("EmbedoptPooledLookupGrad")                                             \
                              .Device(::tensorflow::DEVICE_CPU)                                        \
                              .TypeConstraint<T>("T")                                                  \
                              .TypeConstraint<Tindex>("Tindices")                                      \
                              .HostMemory("num_rows"),                                                 \
                          PooledLookupGradOp<T, Tindex>)
#define EMBEDOPT_REGISTER_POOLED_GRAD_T(T) \
  EMBEDOPT_REGISTER_POOLED_GRAD(T, int32_t); \
  EMBEDOPT_REGISTER_POOLED_GRAD(T, int64_t)

EMBEDOPT_REGISTER_POOLED_GRAD_T(float);
EMBEDOPT_REGISTER_POOLED_GRAD_T(double);
EMBEDOPT_REGISTER_POOLED_GRAD_T(Eigen::half);
EMBEDOPT_REGISTER_POOLED_GRAD_T(Eigen::bfloat16);

}  // namespace embedopt
