// The key -> row index of DynamicEmbedding (key_index.h) as TensorFlow ops:
//
//   EmbedoptKeyIndexHandle  the index resource of one layer;
//   EmbedoptKeyIndexUnique  a batch's distinct keys in first-occurrence order,
//                           each key's position among them, their counts and
//                           rows (tf.unique_with_counts + a hash lookup, in one
//                           op, with the distinct keys' probes in parallel; the
//                           last policy step's index changes are made beside
//                           the dedup);
//   EmbedoptKeyIndexUpdate  one step's removals and insertions;
//   EmbedoptKeyIndexExport  the entries (tests, debugging);
//   EmbedoptKeyIndexReset   marks the index out of date (after a restore).
//
// Every op that reads the index first checks it against the layer's state:
// the index is rebuilt from `row_keys[:rows_in_use]` when its step stamp is
// not the layer's `steps` (a restore, a step taken by the TF-ops path, the
// first use). That costs O(capacity) once; an ordinary step never does it.
#define EIGEN_USE_THREADS

#include <cstdint>
#include <vector>

#include "common.h"
#include "key_index.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace embedopt {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::shape_inference::InferenceContext;

REGISTER_OP("EmbedoptKeyIndexHandle")
    .Attr("container: string = ''")
    .Attr("shared_name: string = ''")
    .Output("index: resource")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape)
    .Doc("A handle to the KeyIndex named `shared_name` (created empty and out of date on first use).");
REGISTER_KERNEL_BUILDER(Name("EmbedoptKeyIndexHandle").Device(::tensorflow::DEVICE_CPU),
                        ::tensorflow::ResourceHandleOp<KeyIndex>);

REGISTER_OP("EmbedoptKeyIndexUnique")
    .Input("index: resource")
    .Input("keys: int64")
    .Input("row_keys: resource")
    .Input("rows_in_use: int64")
    .Input("steps: int64")
    .Output("unique: int64")
    .Output("position: int32")
    .Output("counts: int64")
    .Output("rows: int64")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle keys;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &keys));
      for (int i : {0, 2}) c->set_output(i, c->Vector(c->UnknownDim()));
      c->set_output(1, keys);
      c->set_output(3, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The distinct `keys` in order of first occurrence (as tf.unique), and their rows.

row_keys: the layer's row -> key variable (int64 [capacity]), read only when
  the index must be rebuilt.
rows_in_use, steps: the layer's counters (the index is rebuilt when its step
  stamp differs from `steps`).
position: keys[i] == unique[position[i]].
counts: occurrences of each distinct key.
rows: the row of each distinct key, -1 where it has none.
)doc");

REGISTER_OP("EmbedoptKeyIndexUpdate")
    .Input("index: resource")
    .Input("removed_keys: int64")
    .Input("inserted_keys: int64")
    .Input("inserted_rows: int64")
    .Input("step: int64")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::NoOutputs)
    .Doc(R"doc(
Removes `removed_keys`, then maps inserted_keys[j] to inserted_rows[j], and
stamps the index with `step` (the layer's `steps` after this step). The index
must be in date for step - 1 (EmbedoptKeyIndexUnique of this step made it so).
)doc");

REGISTER_OP("EmbedoptKeyIndexExport")
    .Input("index: resource")
    .Input("row_keys: resource")
    .Input("rows_in_use: int64")
    .Input("steps: int64")
    .Output("keys: int64")
    .Output("rows: int64")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(c->UnknownDim()));
      c->set_output(1, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    })
    .Doc("The index's keys and their rows, in slot order (rebuilt first if out of date).");

REGISTER_OP("EmbedoptKeyIndexReset")
    .Input("index: resource")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::NoOutputs)
    .Doc("Marks the index out of date: the next op that reads it rebuilds it from row_keys.");

namespace {

absl::Status ScalarInput(OpKernelContext* ctx, int i, const char* arg, int64_t* value) {
  const Tensor& t = ctx->input(i);
  if (!::tensorflow::TensorShapeUtils::IsScalar(t.shape())) {
    return absl::InvalidArgumentError(absl::StrCat(arg, " must be a scalar, got shape ", t.shape().DebugString()));
  }
  *value = t.scalar<int64_t>()();
  return absl::OkStatus();
}

// Rebuilds `index` from row_keys[:rows_in_use] (inputs row_keys_input and the
// two after it) unless it is stamped with `steps` already; then the index's
// deferred changes are made, unless `apply_deferred` is false (the caller
// makes them). Call with the index's lock held.
absl::Status EnsureInDate(OpKernelContext* ctx, KeyIndex* index, int row_keys_input, bool apply_deferred = true) {
  int64_t rows_in_use = 0, steps = 0;
  TF_RETURN_IF_ERROR(ScalarInput(ctx, row_keys_input + 1, "rows_in_use", &rows_in_use));
  TF_RETURN_IF_ERROR(ScalarInput(ctx, row_keys_input + 2, "steps", &steps));
  if (index->synced_step() == steps && steps != KeyIndex::kStale) {
    if (apply_deferred) index->ApplyDeferred();
    return absl::OkStatus();
  }
  TF_RETURN_IF_ERROR(CheckVariable<int64_t>(ctx, row_keys_input, "row_keys"));
  ::tensorflow::core::RefCountPtr<::tensorflow::Var> var;
  TF_RETURN_IF_ERROR(::tensorflow::LookupResource(ctx, ::tensorflow::HandleFromInput(ctx, row_keys_input), &var));
  tsl::tf_shared_lock lock(*var->mu());
  const Tensor& row_keys = *var->tensor();
  if (row_keys.dims() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("row_keys must be a vector, got shape ", row_keys.shape().DebugString()));
  }
  const int64_t capacity = row_keys.dim_size(0);
  if (rows_in_use < 0 || rows_in_use > capacity) {
    return absl::InvalidArgumentError(absl::StrCat("rows_in_use = ", rows_in_use, " is not in [0, ", capacity, "]"));
  }
  index->Reset(capacity);
  const int64_t* keys = row_keys.flat<int64_t>().data();
  for (int64_t r = 0; r < rows_in_use; ++r) index->Insert(keys[r], r);
  if (index->size() != rows_in_use) {
    return absl::InvalidArgumentError(absl::StrCat("row_keys[:", rows_in_use, "] holds a key twice"));
  }
  index->set_synced_step(steps);
  return absl::OkStatus();
}

template <typename T>
void Output(OpKernelContext* ctx, int i, const T* values, int64_t n) {
  Tensor* out = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(i, TensorShape({n}), &out));
  std::copy_n(values, n, out->flat<T>().data());
}

}  // namespace

class KeyIndexUniqueOp : public OpKernel {
 public:
  explicit KeyIndexUniqueOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& keys_in = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckIdVector("keys", keys_in));
    const int64_t n = keys_in.NumElements();
    const int64_t* keys = keys_in.flat<int64_t>().data();
    ::tensorflow::core::RefCountPtr<KeyIndex> index;
    OP_REQUIRES_OK(ctx, GetKeyIndex(ctx, 0, &index));
    ::tensorflow::mutex_lock lock(*index->mu());
    OP_REQUIRES_OK(ctx, EnsureInDate(ctx, index.get(), 2, /*apply_deferred=*/false));

    // Distinct keys in first-occurrence order, each key's number among them and
    // their counts: one pass through a set kept in the index (at 100k keys a
    // step of a Zipf stream about a quarter are distinct). It reads nothing of
    // the index's table: the last policy step's removals and insertions are
    // made beside it.
    Tensor* position_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, keys_in.shape(), &position_out));
    int32_t* position = position_out->flat<int32_t>().data();
    DistinctKeys& distinct = index->distinct_keys();
    int64_t u = 0;
    if (index->has_deferred()) {  // after a training step; not at inference, where a pool task costs latency
      RunUnits(ctx, 2, [&](int64_t unit) { unit == 0 ? void(u = distinct.Number(keys, n, position))
                                                     : index->ApplyDeferred(); });
    } else {
      u = distinct.Number(keys, n, position);
    }
    const int64_t* unique = distinct.unique();

    // Then each distinct key's row: independent random reads, in parallel, each prefetched a few keys ahead.
    Tensor* rows_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({u}), &rows_out));
    int64_t* rows = rows_out->flat<int64_t>().data();
    ParallelFor(ctx, u, 150, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        if (j + kFarAhead < end) index->Prefetch(unique[j + kFarAhead]);
        rows[j] = index->Find(unique[j]);
      }
    });
    Output(ctx, 0, unique, u);
    Output(ctx, 2, distinct.counts(), u);
  }
};
REGISTER_KERNEL_BUILDER(Name("EmbedoptKeyIndexUnique").Device(::tensorflow::DEVICE_CPU), KeyIndexUniqueOp);

class KeyIndexUpdateOp : public OpKernel {
 public:
  explicit KeyIndexUpdateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& removed = ctx->input(1);
    const Tensor& inserted = ctx->input(2);
    const Tensor& rows_in = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckIdVector("removed_keys", removed));
    OP_REQUIRES_OK(ctx, CheckIdVector("inserted_keys", inserted));
    OP_REQUIRES(ctx, rows_in.shape() == inserted.shape(),
                absl::InvalidArgumentError(absl::StrCat("inserted_rows must have the shape of inserted_keys, ",
                                                        inserted.shape().DebugString(), ", got ",
                                                        rows_in.shape().DebugString())));
    int64_t step = 0;
    OP_REQUIRES_OK(ctx, ScalarInput(ctx, 4, "step", &step));
    ::tensorflow::core::RefCountPtr<KeyIndex> index;
    OP_REQUIRES_OK(ctx, GetKeyIndex(ctx, 0, &index));
    ::tensorflow::mutex_lock lock(*index->mu());
    OP_REQUIRES(ctx, index->synced_step() == step - 1 && step - 1 != KeyIndex::kStale,
                absl::FailedPreconditionError(absl::StrCat("the key index is stamped with step ", index->synced_step(),
                                                           ", not ", step - 1, ": the table changed since this step's "
                                                           "EmbedoptKeyIndexUnique")));
    const int64_t* rows = rows_in.flat<int64_t>().data();
    const int64_t m = inserted.NumElements();
    const int64_t bad = FirstOutOfRange(rows, m, index->capacity());
    OP_REQUIRES(ctx, bad < 0, OutOfRange("inserted_rows", bad, bad < 0 ? 0 : rows[bad], index->capacity(), "the table"));
    index->ApplyDeferred();
    for (int64_t key : absl::Span<const int64_t>(removed.flat<int64_t>().data(), removed.NumElements())) {
      index->Remove(key);
    }
    const int64_t* keys = inserted.flat<int64_t>().data();
    for (int64_t j = 0; j < m; ++j) {
      if (index->size() == index->capacity() && index->Find(keys[j]) < 0) {
        index->set_synced_step(KeyIndex::kStale);
        ctx->SetStatus(absl::InvalidArgumentError(
            absl::StrCat("inserted_keys[", j, "] = ", keys[j], " does not fit: the index holds ", index->size(),
                         " keys, its capacity")));
        return;
      }
      index->Insert(keys[j], rows[j]);
    }
    index->set_synced_step(step);
  }
};
REGISTER_KERNEL_BUILDER(Name("EmbedoptKeyIndexUpdate").Device(::tensorflow::DEVICE_CPU), KeyIndexUpdateOp);

class KeyIndexExportOp : public OpKernel {
 public:
  explicit KeyIndexExportOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    ::tensorflow::core::RefCountPtr<KeyIndex> index;
    OP_REQUIRES_OK(ctx, GetKeyIndex(ctx, 0, &index));
    ::tensorflow::mutex_lock lock(*index->mu());
    OP_REQUIRES_OK(ctx, EnsureInDate(ctx, index.get(), 1));
    std::vector<int64_t> keys, rows;
    index->ForEach([&](int64_t key, int64_t row) {
      keys.push_back(key);
      rows.push_back(row);
    });
    Output(ctx, 0, keys.data(), static_cast<int64_t>(keys.size()));
    Output(ctx, 1, rows.data(), static_cast<int64_t>(rows.size()));
  }
};
REGISTER_KERNEL_BUILDER(Name("EmbedoptKeyIndexExport").Device(::tensorflow::DEVICE_CPU), KeyIndexExportOp);

class KeyIndexResetOp : public OpKernel {
 public:
  explicit KeyIndexResetOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    ::tensorflow::core::RefCountPtr<KeyIndex> index;
    OP_REQUIRES_OK(ctx, GetKeyIndex(ctx, 0, &index));
    ::tensorflow::mutex_lock lock(*index->mu());
    index->set_synced_step(KeyIndex::kStale);
  }
};
REGISTER_KERNEL_BUILDER(Name("EmbedoptKeyIndexReset").Device(::tensorflow::DEVICE_CPU), KeyIndexResetOp);

}  // namespace embedopt
