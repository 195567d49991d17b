// One training step of DynamicEmbedding's admission and eviction policy in
// one op, in place on the layer's variables and its KeyIndex: the kernel
// path's counterpart of policy_step (optimizers/dynamic_policy.py), which
// takes ~60 TF ops (stamps, sketch, victims, index, row keys, new rows'
// values, counters, the LRU log). Same state, bit for bit, as those ops
// (tests/optimizers/test_dynamic_paths.py):
//
//   1. resident keys stamp their row with the step (LRU) or add their counts
//      to it and stamp its last_seen with the step (LFU);
//   2. other keys add their counts to the count-min sketch (halved first on
//      every sketch_decay_every-th step); those whose estimate reaches
//      admit_after are admitted, in first-occurrence order;
//   3. admitted keys take never-used rows, then victims: the LRU log's head,
//      or the LFU rows with the smallest (count, last_seen, row) from the
//      index's LFU buckets (lfu_buckets.h), both O(batch) amortized;
//   4. new rows get U(-init_scale, init_scale) from Philox seeded by
//      (seed, step), the values and order tf.random.stateless_uniform gives.
//
// The index's removals (evicted keys) and insertions (admitted keys) are
// handed to the KeyIndex (KeyIndex::Defer): the next step's unique op makes
// them beside its dedup, which leaves a core idle otherwise.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "common.h"
#include "key_index.h"
#include "lfu_buckets.h"
#include "lru_log.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/lib/random/philox_random.h"
#include "tensorflow/core/lib/random/random_distributions.h"

namespace embedopt {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::shape_inference::InferenceContext;

REGISTER_OP("EmbedoptDynamicPolicy")
    .Input("index: resource")
    .Input("unique: int64")
    .Input("counts: int64")
    .Input("rows: int64")
    .Input("embeddings: resource")
    .Input("state: num_state * resource")
    .Output("new_rows: int64")
    .Attr("num_state: int >= 10")
    .Attr("admit_after: int >= 1")
    .Attr("lfu: bool")
    .Attr("sketch_decay_every: int >= 0")
    .Attr("init_scale: float")
    .Attr("seed: int")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(3));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Runs one training step of DynamicEmbedding's policy for a batch's distinct
keys (`unique`, `counts`, and `rows` from EmbedoptKeyIndexUnique of this
step) and returns their rows afterwards (-1: no row).

embeddings: the float32 [capacity, dim] table; new rows are re-initialized.
state: the int64 variables steps, stamps (last_seen or row_counts),
  row_keys, rows_in_use, assigned_rows, num_assigned, admissions,
  evictions, lookups, default_lookups, then the sketch when admit_after > 1,
  then last_seen for LFU (lfu true; stamps are then row_counts), or
  log_rows, log_steps, log_head, log_tail for LRU (lfu false).
init_scale: 0 gives zero rows.
)doc");

namespace {

enum State {
  kSteps, kStamps, kRowKeys, kRowsInUse, kAssigned, kNumAssigned,
  kAdmissions, kEvictions, kLookups, kDefaultLookups, kFirstOptional
};

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// Column of `key` in sketch row `d` (optimizers/dynamic_ops.py: sketch_buckets).
inline int64_t SketchBucket(int64_t key, int64_t d, uint64_t mask) {
  return static_cast<int64_t>(
      SplitMix64Finalize(static_cast<uint64_t>(key) + static_cast<uint64_t>(d + 1) * kGolden) & mask);
}

// Variables of one op, switched to copy-on-read (so that writing in place
// never copies them again) and locked in address order.
class LockedVariables {
 public:
  template <typename T>
  absl::Status Add(OpKernelContext* ctx, int input, const char* arg) {
    TF_RETURN_IF_ERROR(CheckVariable<T>(ctx, input, arg));
    ::tensorflow::core::RefCountPtr<::tensorflow::Var> var;
    TF_RETURN_IF_ERROR(::tensorflow::LookupResource(ctx, ::tensorflow::HandleFromInput(ctx, input), &var));
    TF_RETURN_IF_ERROR((::tensorflow::EnsureSparseVariableAccess<Eigen::ThreadPoolDevice, T>(ctx, var.get())));
    vars_.push_back(std::move(var));
    return absl::OkStatus();
  }

  void LockAll() {
    std::vector<tsl::mutex*> order;
    for (auto& var : vars_) order.push_back(var->mu());
    std::sort(order.begin(), order.end());
    order.erase(std::unique(order.begin(), order.end()), order.end());
    locks_.reserve(order.size());
    for (tsl::mutex* mu : order) locks_.emplace_back(*mu);
  }

  Tensor* tensor(int k) { return vars_[k]->tensor(); }

 private:
  std::vector<::tensorflow::core::RefCountPtr<::tensorflow::Var>> vars_;
  std::vector<tsl::mutex_lock> locks_;
};

absl::Status CheckSize(const Tensor* t, int64_t n, const char* name) {
  if (t->NumElements() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must have ", n, " elements, got shape ", t->shape().DebugString()));
  }
  return absl::OkStatus();
}

// Philox4x32-10 (tsl/lib/random/philox_random.h) on kLanes consecutive
// blocks at once: block g has the counter (g, g >> 32, c2, c3) after Skip(g)
// from (0, 0, c2, c3). Each 32-bit word sits in a 64-bit lane of a GCC
// vector, so the 32 x 32 -> 64 bit products are vector multiplies: written as
// loops over uint32 arrays, GCC left the rounds scalar: 13 ns a block on one
// core, against 2.5 ns this way, with the same bits.
constexpr int kLanes = 32;
typedef uint64_t Lanes8 __attribute__((vector_size(64)));  // 8 words, each in the low half of a uint64

void PhiloxBlocks(uint64_t first, uint32_t c2, uint32_t c3, uint32_t key0, uint32_t key1, uint32_t out[4][kLanes]) {
  constexpr int kVectors = kLanes / 8;
  constexpr uint64_t kLow = 0xFFFFFFFFu;
  Lanes8 x0[kVectors], x1[kVectors], x2[kVectors], x3[kVectors];
  for (int v = 0; v < kVectors; ++v) {
    for (int l = 0; l < 8; ++l) {
      const uint64_t g = first + v * 8 + l;
      x0[v][l] = g & kLow;
      x1[v][l] = g >> 32;
    }
    x2[v] = Lanes8{} + c2;
    x3[v] = Lanes8{} + c3;
  }
  for (int round = 0; round < 10; ++round) {
    for (int v = 0; v < kVectors; ++v) {
      const Lanes8 p0 = x0[v] * uint64_t{0xD2511F53u};
      const Lanes8 p1 = x2[v] * uint64_t{0xCD9E8D57u};
      const Lanes8 y0 = (p1 >> 32) ^ x1[v] ^ uint64_t{key0};
      const Lanes8 y2 = (p0 >> 32) ^ x3[v] ^ uint64_t{key1};
      x1[v] = p1 & kLow;
      x3[v] = p0 & kLow;
      x0[v] = y0;
      x2[v] = y2;
    }
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
  for (int v = 0; v < kVectors; ++v) {
    for (int l = 0; l < 8; ++l) {
      out[0][v * 8 + l] = static_cast<uint32_t>(x0[v][l]);
      out[1][v * 8 + l] = static_cast<uint32_t>(x1[v][l]);
      out[2][v * 8 + l] = static_cast<uint32_t>(x2[v][l]);
      out[3][v * 8 + l] = static_cast<uint32_t>(x3[v][l]);
    }
  }
}

// u * range + minval for u = Uint32ToFloat(bits) (random_distributions.h), in
// two roundings as TF's Mul then AddV2: no fused multiply-add here.
__attribute__((optimize("fp-contract=off"))) void ScaleUniform(const uint32_t* bits, int64_t n, float range,
                                                                float minval, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float product = ::tsl::random::Uint32ToFloat(bits[i]) * range;
    out[i] = product + minval;
  }
}

// tf.random.stateless_uniform([n, dim], seed=(seed, step), minval=-scale,
// maxval=scale) for n = rows.size(), its rows [begin, end) written to table
// rows rows[begin, end): Philox keyed as StatelessRandomGetKeyCounter keys it,
// element e from the (e / 4)-th output block, then u * (max - min) + min in
// float, as the Python op computes it. Any cut of [0, n) gives the same bits.
void UniformRows(float* table, int64_t dim, const std::vector<int64_t>& rows, int64_t begin, int64_t end,
                 int64_t seed, int64_t step, float scale) {
  using ::tsl::random::PhiloxRandom;
  PhiloxRandom::Key key;
  PhiloxRandom::ResultType counter;
  const uint64_t seed0 = static_cast<uint64_t>(seed), seed1 = static_cast<uint64_t>(step);
  key[0] = 0x3ec8f720;
  key[1] = 0x02461e29;
  counter[0] = static_cast<uint32_t>(seed0);
  counter[1] = static_cast<uint32_t>(seed0 >> 32);
  counter[2] = static_cast<uint32_t>(seed1);
  counter[3] = static_cast<uint32_t>(seed1 >> 32);
  const auto mix = PhiloxRandom(counter, key)();  // then key (mix0, mix1), counter (0, 0, mix2, mix3)
  const float minval = -scale, range = scale - minval;
  // A few thousand elements at a time through small buffers (fresh MB-sized ones would cost page faults).
  const int64_t chunk_rows = std::max<int64_t>(1, 4096 / dim);
  std::vector<uint32_t> bits;
  std::vector<float> values;
  uint32_t out[4][kLanes];
  for (int64_t lo = begin; lo < end; lo += chunk_rows) {
    const int64_t hi = std::min(end, lo + chunk_rows);
    // Elements [lo * dim, hi * dim): the blocks that cover them, kLanes at a time, then row by row.
    const int64_t first_block = lo * dim / 4, last_block = (hi * dim + 3) / 4;
    const int64_t blocks = (last_block - first_block + kLanes - 1) / kLanes * kLanes;
    bits.resize(4 * blocks);
    values.resize(4 * blocks);
    for (int64_t b = 0; b < blocks; b += kLanes) {
      PhiloxBlocks(static_cast<uint64_t>(first_block + b), mix[2], mix[3], mix[0], mix[1], out);
      for (int l = 0; l < kLanes; ++l) {
        for (int k = 0; k < 4; ++k) bits[4 * (b + l) + k] = out[k][l];
      }
    }
    ScaleUniform(bits.data(), static_cast<int64_t>(bits.size()), range, minval, values.data());
    const int64_t offset = 4 * first_block;
    for (int64_t j = lo; j < hi; ++j) {
      if (j + kPrefetchAhead < end) PrefetchRow(table + rows[j + kPrefetchAhead] * dim, dim, /*for_write=*/true);
      std::copy_n(values.data() + (j * dim - offset), dim, table + rows[j] * dim);
    }
  }
}

}  // namespace

class DynamicPolicyOp : public OpKernel {
 public:
  explicit DynamicPolicyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_state", &num_state_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("admit_after", &admit_after_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("lfu", &lfu_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("sketch_decay_every", &decay_every_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("init_scale", &init_scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("seed", &seed_));
    OP_REQUIRES(ctx, init_scale_ >= 0,
                absl::InvalidArgumentError(absl::StrCat("init_scale must be >= 0, got ", init_scale_)));
    const int want = kFirstOptional + (admit_after_ > 1 ? 1 : 0) + (lfu_ ? 1 : 4);
    OP_REQUIRES(ctx, num_state_ == want,
                absl::InvalidArgumentError(absl::StrCat("state must hold ", want, " variables for admit_after = ",
                                                        admit_after_, " and lfu = ", lfu_, ", got ", num_state_)));
  }

  // The new rows' values are written in this many units.
  static constexpr int kValueUnits = 3;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& unique_in = ctx->input(1);
    const Tensor& counts_in = ctx->input(2);
    const Tensor& rows_in = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckIdVector("unique", unique_in));
    for (const Tensor* t : {&counts_in, &rows_in}) {
      OP_REQUIRES(ctx, t->shape() == unique_in.shape(),
                  absl::InvalidArgumentError(absl::StrCat("counts and rows must have the shape of unique, ",
                                                          unique_in.shape().DebugString(), ", got ",
                                                          t->shape().DebugString())));
    }
    const int64_t u = unique_in.NumElements();
    const int64_t* keys = unique_in.flat<int64_t>().data();
    const int64_t* counts = counts_in.flat<int64_t>().data();
    const int64_t* rows_before = rows_in.flat<int64_t>().data();

    LockedVariables vars;
    OP_REQUIRES_OK(ctx, vars.Add<float>(ctx, 4, "embeddings"));
    static const char* kNames[] = {"steps", "stamps", "row_keys", "rows_in_use", "assigned_rows", "num_assigned",
                                   "admissions", "evictions", "lookups", "default_lookups"};
    for (int k = 0; k < num_state_; ++k) {
      OP_REQUIRES_OK(ctx, vars.Add<int64_t>(ctx, 5 + k, k < kFirstOptional ? kNames[k] : "state"));
    }
    ::tensorflow::core::RefCountPtr<KeyIndex> index;
    OP_REQUIRES_OK(ctx, GetKeyIndex(ctx, 0, &index));
    ::tensorflow::mutex_lock index_lock(*index->mu());
    vars.LockAll();

    Tensor* table_t = vars.tensor(0);
    auto state = [&](int k) { return vars.tensor(1 + k)->flat<int64_t>().data(); };
    const int64_t capacity = vars.tensor(1 + kStamps)->NumElements();
    OP_REQUIRES(ctx, table_t->dims() == 2 && table_t->dim_size(0) == capacity,
                absl::InvalidArgumentError(absl::StrCat("embeddings must be [", capacity, ", dim], got ",
                                                        table_t->shape().DebugString())));
    for (int k : {kRowKeys, kAssigned}) OP_REQUIRES_OK(ctx, CheckSize(vars.tensor(1 + k), capacity, kNames[k]));
    for (int k : {kSteps, kRowsInUse, kNumAssigned, kAdmissions, kEvictions, kLookups, kDefaultLookups}) {
      OP_REQUIRES_OK(ctx, CheckSize(vars.tensor(1 + k), 1, kNames[k]));
    }
    int next = kFirstOptional;
    Tensor* sketch_t = admit_after_ > 1 ? vars.tensor(1 + next++) : nullptr;
    if (sketch_t != nullptr) {
      const int64_t width = sketch_t->dims() == 2 ? sketch_t->dim_size(1) : 0;
      OP_REQUIRES(ctx, width > 0 && (width & (width - 1)) == 0 && sketch_t->dim_size(0) > 0,
                  absl::InvalidArgumentError(absl::StrCat("the sketch must be [depth, width], width a power of 2, "
                                                          "got ", sketch_t->shape().DebugString())));
    }
    LruLog log{};
    if (!lfu_) {
      Tensor* log_rows = vars.tensor(1 + next);
      log = LruLog{state(kStamps), capacity, log_rows->flat<int64_t>().data(),
                   vars.tensor(2 + next)->flat<int64_t>().data(), log_rows->NumElements(),
                   vars.tensor(3 + next)->flat<int64_t>().data(), vars.tensor(4 + next)->flat<int64_t>().data()};
      OP_REQUIRES(ctx, log.size > 0, absl::InvalidArgumentError("the LRU log must not be empty"));
      OP_REQUIRES_OK(ctx, CheckSize(vars.tensor(2 + next), log.size, "log_steps"));
      OP_REQUIRES_OK(ctx, CheckSize(vars.tensor(3 + next), 1, "log_head"));
      OP_REQUIRES_OK(ctx, CheckSize(vars.tensor(4 + next), 1, "log_tail"));
    }
    int64_t* last_seen = nullptr;  // LFU: each row's last read or admission step, the ties' order
    if (lfu_) {
      OP_REQUIRES_OK(ctx, CheckSize(vars.tensor(1 + next), capacity, "last_seen"));
      last_seen = vars.tensor(1 + next)->flat<int64_t>().data();
    }
    int64_t* const stamps = state(kStamps);
    int64_t* const row_keys = state(kRowKeys);
    const int64_t used = *state(kRowsInUse);
    OP_REQUIRES(ctx, used >= 0 && used <= capacity,
                absl::InvalidArgumentError(absl::StrCat("rows_in_use = ", used, " is not in [0, ", capacity, "]")));
    for (int64_t i = 0; i < u; ++i) {
      OP_REQUIRES(ctx, rows_before[i] >= -1 && rows_before[i] < used,
                  absl::InvalidArgumentError(absl::StrCat("rows[", i, "] = ", rows_before[i], " is not -1 or a row "
                                                          "in use (rows_in_use = ", used, ")")));
    }
    const int64_t step = *state(kSteps) + 1;
    OP_REQUIRES(ctx, index->synced_step() == step - 1 && step - 1 != KeyIndex::kStale,
                absl::FailedPreconditionError(absl::StrCat("the key index is stamped with step ", index->synced_step(),
                                                           ", not ", step - 1, ": the table changed since this step's "
                                                           "EmbedoptKeyIndexUnique")));
    OP_REQUIRES(ctx, index->capacity() == capacity,
                absl::InvalidArgumentError(absl::StrCat("the key index holds ", index->capacity(), " rows, the table ",
                                                        capacity)));
    *state(kSteps) = step;

    // 1. Resident keys.
    std::vector<int64_t> touched;  // the rows this step reads or assigns: the LRU log's or LFU buckets' append
    std::vector<int64_t> candidates;
    touched.reserve(u);
    candidates.reserve(u);
    int64_t total = 0, resident_total = 0;
    for (int64_t i = 0; i < u; ++i) {
      total += counts[i];
      const int64_t row = rows_before[i];
      if (row < 0) {
        candidates.push_back(i);
        continue;
      }
      touched.push_back(row);
      resident_total += counts[i];
    }
    const int64_t num_resident = static_cast<int64_t>(touched.size());
    // The resident rows' stamps: scattered over an array of MBs (each loop below asks for its lines ahead),
    // one row per distinct key, so the threads never write the same one.
    ParallelFor(ctx, u, 40, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (i + kFarAhead < end && rows_before[i + kFarAhead] >= 0) {
          __builtin_prefetch(stamps + rows_before[i + kFarAhead], 1);
        }
        const int64_t row = rows_before[i];
        if (row < 0) continue;
        stamps[row] = lfu_ ? stamps[row] + counts[i] : step;
        if (lfu_) last_seen[row] = step;
      }
    });

    // 2. Admission through the count-min sketch.
    if (sketch_t != nullptr) {
      const int64_t depth = sketch_t->dim_size(0), width = sketch_t->dim_size(1);
      int64_t* sketch = sketch_t->flat<int64_t>().data();
      if (decay_every_ > 0 && step % decay_every_ == 0) {
        for (int64_t c = 0; c < depth * width; ++c) sketch[c] /= 2;  // counts are >= 0: floor
      }
      const uint64_t mask = static_cast<uint64_t>(width - 1);
      // Every count is added before any estimate is read, as the TF ops do: the cells are hashed once, kept.
      std::vector<int64_t> cells(candidates.size() * depth);
      for (size_t c = 0; c < candidates.size(); ++c) {
        const int64_t i = candidates[c];
        for (int64_t d = 0; d < depth; ++d) {
          cells[c * depth + d] = d * width + SketchBucket(keys[i], d, mask);
          sketch[cells[c * depth + d]] += counts[i];
        }
      }
      std::vector<int64_t> admitted;
      for (size_t c = 0; c < candidates.size(); ++c) {
        int64_t estimate = std::numeric_limits<int64_t>::max();
        for (int64_t d = 0; d < depth; ++d) estimate = std::min(estimate, sketch[cells[c * depth + d]]);
        if (estimate >= admit_after_) admitted.push_back(candidates[c]);
      }
      candidates.swap(admitted);
    }

    // 3. Rows for the admitted keys: never-used rows first, then victims.
    const int64_t free = capacity - used;
    const int64_t num_admit = std::min<int64_t>(candidates.size(), free + (used - num_resident));
    const int64_t num_fresh = std::min(num_admit, free);
    const int64_t num_evict = num_admit - num_fresh;
    std::vector<int64_t> new_rows;
    new_rows.reserve(num_admit);
    for (int64_t r = used; r < used + num_fresh; ++r) new_rows.push_back(r);
    if (num_evict > 0) {
      std::vector<int64_t> victims;
      if (lfu_) {
        OP_REQUIRES_OK(ctx, index->lfu().Victims(stamps, last_seen, used, step, num_evict, &victims));
      } else {
        OP_REQUIRES_OK(ctx, log.Victims(num_evict, step, used, &victims));
      }
      new_rows.insert(new_rows.end(), victims.begin(), victims.end());
    }
    std::vector<int64_t> evicted(num_evict);
    for (int64_t j = 0; j < num_evict; ++j) {
      if (j + kFarAhead < num_evict) __builtin_prefetch(row_keys + new_rows[num_fresh + j + kFarAhead], 0);
      evicted[j] = row_keys[new_rows[num_fresh + j]];
    }
    // The writes to the row variables with the eviction order's append, and the new rows' values (in
    // thirds), touch disjoint memory: they run side by side, four units on the pool. (On the benchmark's
    // evicting step, 0.2-0.5 ms for the first unit, 0.13-0.21 ms for each third of the values.)
    const int64_t dim = table_t->dim_size(1);
    float* table = table_t->flat<float>().data();
    absl::Status side_status;
    auto variables = [&] {
      for (int64_t j = 0; j < num_admit; ++j) {
        if (j + kFarAhead < num_admit) {
          __builtin_prefetch(row_keys + new_rows[j + kFarAhead], 1);
          __builtin_prefetch(stamps + new_rows[j + kFarAhead], 1);
        }
        const int64_t i = candidates[j], row = new_rows[j];
        row_keys[row] = keys[i];
        stamps[row] = lfu_ ? counts[i] : step;
        if (lfu_) last_seen[row] = step;
        state(kAssigned)[j] = row;
      }
      touched.insert(touched.end(), new_rows.begin(), new_rows.end());
      if (lfu_) {
        index->lfu().Append(stamps, last_seen, touched, step, capacity);
      } else {
        side_status = log.Append(touched, step);
      }
    };
    // 4. The new rows' values, rows [lo, hi) of new_rows (the same bits however they are cut).
    auto values = [&](int64_t lo, int64_t hi) {
      if (init_scale_ > 0) {
        UniformRows(table, dim, new_rows, lo, hi, seed_, step, init_scale_);
      } else {
        for (int64_t j = lo; j < hi; ++j) std::fill(table + new_rows[j] * dim, table + (new_rows[j] + 1) * dim, 0.0f);
      }
    };
    RunUnits(ctx, 1 + kValueUnits, [&](int64_t unit) {
      if (unit == 0) {
        variables();
      } else {
        values(num_admit * (unit - 1) / kValueUnits, num_admit * unit / kValueUnits);
      }
    });
    // The index's removals and insertions wait for the next step's unique op, which makes them beside its
    // dedup (every other reader of the index makes them first).
    std::vector<std::pair<int64_t, int64_t>> inserted(num_admit);
    for (int64_t j = 0; j < num_admit; ++j) inserted[j] = {keys[candidates[j]], new_rows[j]};
    index->Defer(std::move(evicted), std::move(inserted));
    OP_REQUIRES_OK(ctx, side_status);
    index->set_synced_step(step);
    *state(kNumAssigned) = num_admit;
    *state(kRowsInUse) = used + num_fresh;

    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, unique_in.shape(), &out));
    int64_t* rows_after = out->flat<int64_t>().data();
    std::copy(rows_before, rows_before + u, rows_after);
    int64_t admitted_total = 0;
    for (int64_t j = 0; j < num_admit; ++j) {
      rows_after[candidates[j]] = new_rows[j];
      admitted_total += counts[candidates[j]];
    }
    *state(kAdmissions) += num_admit;
    *state(kEvictions) += num_evict;
    *state(kLookups) += total;
    *state(kDefaultLookups) += total - resident_total - admitted_total;
  }

 private:
  int num_state_ = 0;
  int admit_after_ = 1;
  bool lfu_ = false;
  int decay_every_ = 0;
  float init_scale_ = 0;
  int64_t seed_ = 0;
};
REGISTER_KERNEL_BUILDER(Name("EmbedoptDynamicPolicy").Device(::tensorflow::DEVICE_CPU), DynamicPolicyOp);

}  // namespace embedopt
