// DynamicEmbedding's lookup on the kernel path, and its gradient:
//
//   EmbedoptResidentLookup      out[i] = table[rows[position[i]]], zeros where
//                               that row is -1 (a key without a row);
//   EmbedoptResidentLookupGrad  the table's gradient: one entry per distinct
//                               key with a row, rows ascending, each the sum of
//                               its occurrences' upstream rows in input order.
//
// The key index's unique op has already grouped the batch's keys (`position`
// maps each occurrence to its distinct key), so neither op sorts the batch:
// the gradient sorts the distinct rows only (a quarter of the batch in a Zipf
// stream) and adds each occurrence to its key's sum, the keys cut into one
// range per thread, the sort beside them. The sums are the same bits as
// EmbedoptPooledLookupGrad's on bags of one, whatever the thread count: per
// row, from zero, in input order.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <limits>
#include <type_traits>
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

REGISTER_OP("EmbedoptResidentLookup")
    .Input("table: resource")
    .Input("rows: int64")
    .Input("position: int32")
    .Output("out: T")
    .Attr("T: {float, double, half, bfloat16}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle rows, position, row = c->UnknownShape();
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &rows));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &position));
      const auto* handle = c->input_handle_shapes_and_types(0);
      if (handle != nullptr && handle->size() == 1) {
        ShapeHandle table;
        TF_RETURN_IF_ERROR(c->WithRankAtLeast((*handle)[0].shape, 1, &table));
        TF_RETURN_IF_ERROR(c->Subshape(table, 1, &row));
      }
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(c->Dim(position, 0)), row, &out));
      c->set_output(0, out);
      return absl::OkStatus();
    })
    .Doc("out[i] = table[rows[position[i]]], or zeros where that row is -1.");

REGISTER_OP("EmbedoptResidentLookupGrad")
    .Input("upstream: T")
    .Input("rows: int64")
    .Input("position: int32")
    .Output("unique_rows: int64")
    .Output("summed: T")
    .Attr("T: {float, double, half, bfloat16}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle upstream, row, summed, unused;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &upstream));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &unused));
      TF_RETURN_IF_ERROR(c->Subshape(upstream, 1, &row));
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(c->UnknownDim()), row, &summed));
      c->set_output(0, c->Vector(c->UnknownDim()));
      c->set_output(1, summed);
      return absl::OkStatus();
    })
    .Doc(R"doc(
The table's gradient of EmbedoptResidentLookup.

unique_rows: the rows >= 0 of `rows`, ascending (each distinct: one per key).
summed: summed[k] adds upstream[i] over the i with rows[position[i]] ==
  unique_rows[k], in input order.
)doc");

namespace {

// Checks `rows` (each -1 or in [0, num_rows)) and `position` (each in [0, rows.size())).
absl::Status CheckRowsAndPosition(const Tensor& rows_in, const Tensor& position_in, int64_t num_rows,
                                  const char* rows_of) {
  TF_RETURN_IF_ERROR(CheckIdVector("rows", rows_in));
  TF_RETURN_IF_ERROR(CheckIdVector("position", position_in));
  const int64_t u = rows_in.NumElements();
  const int64_t* rows = rows_in.flat<int64_t>().data();
  for (int64_t j = 0; j < u; ++j) {
    if (rows[j] < -1 || rows[j] >= num_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("rows[", j, "] = ", rows[j], " is not -1 or in [0, ", num_rows, "), the rows of ", rows_of));
    }
  }
  const int32_t* position = position_in.flat<int32_t>().data();
  const int64_t bad = FirstOutOfRange(position, position_in.NumElements(), u);
  return bad < 0 ? absl::OkStatus() : OutOfRange("position", bad, position[bad], u, "rows");
}

}  // namespace

template <typename T>
class ResidentLookupOp : public OpKernel {
 public:
  explicit ResidentLookupOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    OP_REQUIRES_OK(ctx, CheckVariable<T>(ctx, 0, "table"));
    ::tensorflow::core::RefCountPtr<::tensorflow::Var> var;
    OP_REQUIRES_OK(ctx, ::tensorflow::LookupResource(ctx, ::tensorflow::HandleFromInput(ctx, 0), &var));
    // As ResourceGather: rows are read in place under a shared lock, never copied into a tensor.
    OP_REQUIRES_OK(ctx, ::tensorflow::EnsureSparseVariableAccess<Eigen::ThreadPoolDevice, T>(ctx, var.get()));
    tsl::tf_shared_lock lock(*var->mu());
    const Tensor& table = *var->tensor();
    OP_REQUIRES(ctx, table.dims() >= 1,
                absl::InvalidArgumentError(absl::StrCat("table must have rank >= 1, got shape ",
                                                        table.shape().DebugString())));
    const Tensor& rows_in = ctx->input(1);
    const Tensor& position_in = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckRowsAndPosition(rows_in, position_in, table.dim_size(0), "table"));
    const int64_t n = position_in.NumElements();
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, WithRows(n, table.shape()), &out_t));
    const int64_t width = RowWidth(table);
    const int64_t* rows = rows_in.flat<int64_t>().data();
    const int32_t* position = position_in.flat<int32_t>().data();
    const T* data = table.flat<T>().data();
    T* out = out_t->flat<T>().data();
    ParallelFor(ctx, n, 2 * width, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (i + kFarAhead < end) {
          const int64_t ahead = rows[position[i + kFarAhead]];
          if (ahead >= 0) PrefetchRow(data + ahead * width, width);
        }
        const int64_t row = rows[position[i]];
        if (row >= 0) {
          std::copy_n(data + row * width, width, out + i * width);
        } else {
          std::fill_n(out + i * width, width, T(0));
        }
      }
    });
  }
};

template <typename T>
class ResidentLookupGradOp : public OpKernel {
 public:
  explicit ResidentLookupGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& upstream = ctx->input(0);
    const Tensor& rows_in = ctx->input(1);
    const Tensor& position_in = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckRowsAndPosition(rows_in, position_in, std::numeric_limits<int64_t>::max(), "the table"));
    const int64_t u = rows_in.NumElements(), n = position_in.NumElements();
    OP_REQUIRES(ctx, upstream.dims() >= 1 && upstream.dim_size(0) == n,
                absl::InvalidArgumentError(absl::StrCat("upstream must have shape [", n, ", ...] (one row per "
                                                        "position), got ", upstream.shape().DebugString())));
    const int64_t* rows = rows_in.flat<int64_t>().data();
    const int32_t* position = position_in.flat<int32_t>().data();
    const int64_t width = RowWidth(upstream);
    const T* up = upstream.flat<T>().data();
    using C = ComputeType<T>;

    // The distinct keys with a row, by ascending row.
    std::vector<int64_t> resident, of_key;
    for (int64_t j = 0; j < u; ++j) {
      if (rows[j] >= 0) {
        resident.push_back(rows[j]);
        of_key.push_back(j);
      }
    }
    const int64_t m = static_cast<int64_t>(resident.size());
    Tensor* rows_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({m}), &rows_out));
    int64_t* unique_rows = rows_out->flat<int64_t>().data();
    Tensor* summed_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, WithRows(m, upstream.shape()), &summed_t));
    T* out = summed_t->flat<T>().data();

    // sums[j] adds the upstream rows of key j's occurrences, in input order, by one thread (the same bits
    // whatever the thread count): the keys are cut into one range per part, each part first lists the
    // positions of its resident keys (without a branch), then adds them up. The rows' sort runs beside.
    // Half types are summed in float and rounded once, as the pooled gradient does.
    const int parts = n < kSplitAbove ? 1
                                      : static_cast<int>(std::clamp<int64_t>(
                                            ctx->device()->tensorflow_cpu_worker_threads()->num_threads, 1, 8));
    ScratchBuffer<C> sums(u * width, /*slot=*/0);
    std::vector<int32_t> entry(m);  // entry[k]: the key of the k-th row, ascending
    bool distinct_rows = true;
    auto sort_rows = [&] {
      const IdGroups sorted(resident.data(), m, SerialFor{});
      distinct_rows = sorted.size() == m;
      if (!distinct_rows) return;
      for (int64_t k = 0; k < m; ++k) {
        const int64_t at = sorted.Position(sorted.Begin(k));
        unique_rows[k] = resident[at];
        entry[k] = static_cast<int32_t>(of_key[at]);
      }
    };
    auto add_part = [&](int64_t part) {
      const int64_t lo = u * part / parts, hi = u * (part + 1) / parts;
      std::fill_n(sums.get() + lo * width, (hi - lo) * width, C(0));
      ScratchBuffer<int32_t> mine(n, /*slot=*/1);
      int64_t count = 0;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t j = position[i];
        mine[count] = static_cast<int32_t>(i);
        count += static_cast<int64_t>(j >= lo && j < hi && rows[j] >= 0);
      }
      WithRowWidth(width, [&](auto fixed) {
        constexpr int64_t kWidth = decltype(fixed)::value;  // 0: only known at run time
        const int64_t w = kWidth > 0 ? kWidth : width;
        for (int64_t c = 0; c < count; ++c) {
          if (c + kFarAhead < count) {
            const int64_t ahead = mine[c + kFarAhead];
            PrefetchRow(sums.get() + position[ahead] * w, w, true);
            if (parts > 1) PrefetchRow(up + ahead * w, w);
          }
          const int64_t i = mine[c];
          C* dst = sums.get() + position[i] * w;
          const T* src = up + i * w;
          for (int64_t e = 0; e < w; ++e) dst[e] += static_cast<C>(src[e]);
        }
      });
    };
    RunUnits(ctx, parts + 1, [&](int64_t unit) { unit == 0 ? sort_rows() : add_part(unit - 1); });
    OP_REQUIRES(ctx, distinct_rows, absl::InvalidArgumentError("rows holds a row twice"));
    ParallelFor(ctx, m, 4 * width, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) StoreRow(sums.get() + entry[k] * width, width, out + k * width);
    });
  }

 private:
  // Batches of fewer positions are summed on one thread.
  static constexpr int64_t kSplitAbove = 16384;
};
#define EMBEDOPT_REGISTER_RESIDENT_LOOKUP(T)                                                                 \
  REGISTER_KERNEL_BUILDER(                                                                                   \
      Name("EmbedoptResidentLookup").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),                \
      ResidentLookupOp<T>);                                                                                  \
  REGISTER_KERNEL_BUILDER(                                                                                   \
      Name("EmbedoptResidentLookupGrad").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),            \
      ResidentLookupGradOp<T>)
EMBEDOPT_REGISTER_RESIDENT_LOOKUP(float);
EMBEDOPT_REGISTER_RESIDENT_LOOKUP(double);
EMBEDOPT_REGISTER_RESIDENT_LOOKUP(Eigen::half);
EMBEDOPT_REGISTER_RESIDENT_LOOKUP(Eigen::bfloat16);

}  // namespace embedopt
