// EmbedoptPooledLookup and its gradient: pooled (sum, mean, sqrtn) lookups of
// bags of ids in a resource variable, as fbgemm's table-batched embedding does.
#define EIGEN_USE_THREADS  // training_op_helpers.h copies tensors on the CPU device

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "bags.h"
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
    .Output("order: int32")
    .Output("group_starts: int32")
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
      c->set_output(1, c->Vector(c->Dim(ids, 0)));
      c->set_output(2, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    });

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
    AdviseHugePages(table.tensor_data().data(), table.TotalBytes());
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
    // The gradient needs the ids grouped (a sort); the lookup does not. Both
    // run here at once: unit 0 of the loop below groups the ids on one
    // thread while the other units gather the bags, so the backward pass
    // only sums. The pool hands units out one at a time (fixed blocks of 1).
    const int64_t n = bags.num_ids;
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(64, bags.num_bags / 64));
    std::unique_ptr<IdGroups> groups;
    // Unweighted ids add their rows as they are (a weight of 1 multiplies nothing away), and a sum's divisor
    // of 1 divides nothing: the same bits, fewer operations. The width, when common, is a constant.
    auto gather_fixed = [&](auto fixed, int64_t begin, int64_t end) {
      constexpr int64_t kWidth = decltype(fixed)::value;  // 0: only known at run time
      const int64_t w = kWidth > 0 ? kWidth : width;
      C fixed_acc[kWidth > 0 ? kWidth : 1];
      std::vector<C> runtime_acc(kWidth > 0 ? 0 : width);
      C* acc = kWidth > 0 ? fixed_acc : runtime_acc.data();
      const bool weighted = bags.weights != nullptr;
      const bool plain_sum = !weighted && bags.combiner == Combiner::kSum;
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t i = 0; i < w; ++i) acc[i] = C(0);
        for (int64_t k = bags.splits[b]; k < bags.splits[b + 1]; ++k) {
          if (k + kPrefetchAhead < n) {
            PrefetchRow(rows_data + static_cast<int64_t>(bags.ids[k + kPrefetchAhead]) * w, w);
          }
          const T* row = rows_data + static_cast<int64_t>(bags.ids[k]) * w;
          if (weighted) {
            const C weight = bags.template Weight<C>(k);
            for (int64_t i = 0; i < w; ++i) acc[i] += weight * static_cast<C>(row[i]);
          } else {
            for (int64_t i = 0; i < w; ++i) acc[i] += static_cast<C>(row[i]);
          }
        }
        T* dst = out + b * w;
        if (plain_sum) {
          for (int64_t i = 0; i < w; ++i) dst[i] = static_cast<T>(acc[i]);
          continue;
        }
        const C divisor = bags.template Divisor<C>(b);
        for (int64_t i = 0; i < w; ++i) dst[i] = static_cast<T>(divisor == C(0) ? C(0) : acc[i] / divisor);
      }
    };
    auto gather = [&](int64_t begin, int64_t end) {
      WithRowWidth(width, [&](auto fixed) { gather_fixed(fixed, begin, end); });
    };
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(chunks + 1, tsl::thread::ThreadPool::SchedulingParams::Fixed(1), [&](int64_t begin, int64_t end) {
      for (int64_t unit = begin; unit < end; ++unit) {
        if (unit == 0) {
          groups.reset(new IdGroups(bags.ids, n, SerialFor{}));
        } else {
          gather(bags.num_bags * (unit - 1) / chunks, bags.num_bags * unit / chunks);
        }
      }
    });
    Tensor* order = nullptr;
    Tensor* starts = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({n}), &order));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({groups->size() + 1}), &starts));
    groups->Export(order->flat<int32_t>().data(), starts->flat<int32_t>().data());
  }

 private:
  const Combiner combiner_;
};

#define EMBEDOPT_REGISTER_POOLED(T, Tindex)                                                              \
  REGISTER_KERNEL_BUILDER(Name("EmbedoptPooledLookup")                                                 \
                              .Device(::tensorflow::DEVICE_CPU)                                        \
                              .TypeConstraint<T>("T")                                                  \
                              .TypeConstraint<Tindex>("Tindices"),                                     \
                          PooledLookupOp<T, Tindex>)
#define EMBEDOPT_REGISTER_POOLED_T(T) \
  EMBEDOPT_REGISTER_POOLED(T, int32_t); \
  EMBEDOPT_REGISTER_POOLED(T, int64_t)

EMBEDOPT_REGISTER_POOLED_T(float);
EMBEDOPT_REGISTER_POOLED_T(double);
EMBEDOPT_REGISTER_POOLED_T(Eigen::half);
EMBEDOPT_REGISTER_POOLED_T(Eigen::bfloat16);

}  // namespace embedopt
