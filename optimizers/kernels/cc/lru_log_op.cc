// The LRU eviction log of DynamicEmbedding (optimizers/dynamic_lru.py) in two
// ops that update its variables in place, where the TF ops run a while loop
// of gathers, compares and cumsums over the log's head and a sort and two
// scatters for the append. Same entries, same order, same head and tail as
// the TF ops (the module docstring of dynamic_lru.py states the algorithm):
//
//   EmbedoptLruVictims  builds the log on first need, then takes the first
//                       `num_evict` live entries from the head;
//   EmbedoptLruAppend   appends a step's rows, ascending, compacting the log
//                       to its live entries first when the ring would overrun.
//
// An entry (row r, step s) at position p (ring index p % size) is live while
// last_seen[r] == s.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "common.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace embedopt {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::shape_inference::InferenceContext;

REGISTER_OP("EmbedoptLruVictims")
    .Input("last_seen: resource")
    .Input("log_rows: resource")
    .Input("log_steps: resource")
    .Input("head: resource")
    .Input("tail: resource")
    .Input("num_evict: int64")
    .Input("step: int64")
    .Input("used: int64")
    .Output("victims: int64")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The `num_evict` least recently used rows not stamped `step`, in LRU order
(ties to the lower row), consumed from the log's head. The log is first built
from last_seen[:used] if it is not kept yet (tail == 0).
)doc");

REGISTER_OP("EmbedoptLruAppend")
    .Input("last_seen: resource")
    .Input("log_rows: resource")
    .Input("log_steps: resource")
    .Input("head: resource")
    .Input("tail: resource")
    .Input("rows: int64")
    .Input("step: int64")
    .SetShapeFn(::tensorflow::shape_inference::NoOutputs)
    .Doc("Logs the distinct `rows` (stamped `step`) in ascending order, once the log is kept (tail > 0).");

namespace {

// The five variables of the log, locked and in place, for one op.
class LogState {
 public:
  absl::Status Open(OpKernelContext* ctx) {
    static const char* kNames[] = {"last_seen", "log_rows", "log_steps", "head", "tail"};
    for (int i = 0; i < 5; ++i) TF_RETURN_IF_ERROR(CheckVariable<int64_t>(ctx, i, kNames[i]));
    locks_.emplace(::tensorflow::MaybeLockVariableInputMutexesInOrder<Eigen::ThreadPoolDevice, int64_t>(
        ctx, /*do_lock=*/true, /*sparse=*/false, {0, 1, 2, 3, 4}));
    for (int i = 0; i < 5; ++i) {
      TF_RETURN_IF_ERROR(::tensorflow::GetInputTensorFromVariable<Eigen::ThreadPoolDevice, int64_t>(
          ctx, i, /*lock_held=*/true, /*sparse=*/false, &vars_[i]));
    }
    size_ = vars_[1].NumElements();
    if (size_ == 0 || vars_[2].NumElements() != size_ || vars_[3].NumElements() != 1 ||
        vars_[4].NumElements() != 1) {
      return absl::InvalidArgumentError(absl::StrCat("the LRU log must have log_rows and log_steps of one size > 0 "
                                                     "and scalar head and tail; got ", vars_[1].shape().DebugString(),
                                                     ", ", vars_[2].shape().DebugString()));
    }
    return absl::OkStatus();
  }

  int64_t* stamps() { return vars_[0].flat<int64_t>().data(); }
  int64_t capacity() const { return vars_[0].NumElements(); }
  int64_t& row_at(int64_t position) { return vars_[1].flat<int64_t>().data()[position % size_]; }
  int64_t& step_at(int64_t position) { return vars_[2].flat<int64_t>().data()[position % size_]; }
  int64_t& head() { return vars_[3].flat<int64_t>().data()[0]; }
  int64_t& tail() { return vars_[4].flat<int64_t>().data()[0]; }
  int64_t size() const { return size_; }
  bool Live(int64_t position) { return stamps()[row_at(position)] == step_at(position); }

 private:
  std::optional<::tensorflow::VariableInputLockHolder> locks_;
  Tensor vars_[5];
  int64_t size_ = 0;
};

absl::Status ScalarArg(OpKernelContext* ctx, int i, const char* arg, int64_t* value) {
  const Tensor& t = ctx->input(i);
  if (!::tensorflow::TensorShapeUtils::IsScalar(t.shape())) {
    return absl::InvalidArgumentError(absl::StrCat(arg, " must be a scalar, got shape ", t.shape().DebugString()));
  }
  *value = t.scalar<int64_t>()();
  return absl::OkStatus();
}

}  // namespace

class LruVictimsOp : public OpKernel {
 public:
  explicit LruVictimsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    int64_t num_evict = 0, step = 0, used = 0;
    OP_REQUIRES_OK(ctx, ScalarArg(ctx, 5, "num_evict", &num_evict));
    OP_REQUIRES_OK(ctx, ScalarArg(ctx, 6, "step", &step));
    OP_REQUIRES_OK(ctx, ScalarArg(ctx, 7, "used", &used));
    LogState log;
    OP_REQUIRES_OK(ctx, log.Open(ctx));
    OP_REQUIRES(ctx, used >= 0 && used <= log.capacity(),
                absl::InvalidArgumentError(absl::StrCat("used = ", used, " is not in [0, ", log.capacity(), "]")));
    if (log.tail() <= 0) {
      // First need: the rows in use not stamped `step`, by (stamp, row): one sort, once per run.
      std::vector<std::pair<int64_t, int64_t>> order;
      for (int64_t r = 0; r < used; ++r) {
        if (log.stamps()[r] < step) order.emplace_back(log.stamps()[r], r);
      }
      std::sort(order.begin(), order.end());
      OP_REQUIRES(ctx, static_cast<int64_t>(order.size()) <= log.size(),
                  absl::InvalidArgumentError("the LRU log is smaller than the rows in use"));
      for (int64_t k = 0; k < static_cast<int64_t>(order.size()); ++k) {
        log.row_at(k) = order[k].second;
        log.step_at(k) = order[k].first;
      }
      log.head() = 0;
      log.tail() = static_cast<int64_t>(order.size());
    }
    std::vector<int64_t> victims;
    victims.reserve(std::max<int64_t>(num_evict, 0));
    int64_t position = log.head();
    for (; position < log.tail() && static_cast<int64_t>(victims.size()) < num_evict; ++position) {
      const int64_t row = log.row_at(position);
      OP_REQUIRES(ctx, row >= 0 && row < log.capacity(),
                  absl::InvalidArgumentError(absl::StrCat("the LRU log holds row ", row, " of ", log.capacity())));
      if (log.Live(position)) victims.push_back(row);
    }
    OP_REQUIRES(ctx, static_cast<int64_t>(victims.size()) == std::max<int64_t>(num_evict, 0),
                absl::InvalidArgumentError("DynamicEmbedding: the LRU log holds fewer live rows than needed"));
    log.head() = position;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({static_cast<int64_t>(victims.size())}), &out));
    std::copy(victims.begin(), victims.end(), out->flat<int64_t>().data());
  }
};
REGISTER_KERNEL_BUILDER(Name("EmbedoptLruVictims").Device(::tensorflow::DEVICE_CPU), LruVictimsOp);

class LruAppendOp : public OpKernel {
 public:
  explicit LruAppendOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& rows_in = ctx->input(5);
    OP_REQUIRES_OK(ctx, CheckIdVector("rows", rows_in));
    int64_t step = 0;
    OP_REQUIRES_OK(ctx, ScalarArg(ctx, 6, "step", &step));
    LogState log;
    OP_REQUIRES_OK(ctx, log.Open(ctx));
    if (log.tail() <= 0) return;  // no log kept yet
    const int64_t added = rows_in.NumElements();
    std::vector<int64_t> rows(rows_in.flat<int64_t>().data(), rows_in.flat<int64_t>().data() + added);
    const int64_t bad = FirstOutOfRange(rows.data(), added, log.capacity());
    OP_REQUIRES(ctx, bad < 0, OutOfRange("rows", bad, bad < 0 ? 0 : rows[bad], log.capacity(), "last_seen"));
    std::sort(rows.begin(), rows.end());
    int64_t start = log.tail();
    if (log.tail() - log.head() + added > log.size()) {
      // Compact: the live entries, in order, to positions 0, 1, ...
      std::vector<std::pair<int64_t, int64_t>> live;
      for (int64_t p = log.head(); p < log.tail(); ++p) {
        if (log.Live(p)) live.emplace_back(log.row_at(p), log.step_at(p));
      }
      for (int64_t k = 0; k < static_cast<int64_t>(live.size()); ++k) {
        log.row_at(k) = live[k].first;
        log.step_at(k) = live[k].second;
      }
      log.head() = 0;
      start = static_cast<int64_t>(live.size());
    }
    OP_REQUIRES(ctx, start - log.head() + added <= log.size(),
                absl::InvalidArgumentError("the LRU log cannot hold this step's rows"));
    for (int64_t k = 0; k < added; ++k) {
      log.row_at(start + k) = rows[k];
      log.step_at(start + k) = step;
    }
    log.tail() = start + added;
  }
};
REGISTER_KERNEL_BUILDER(Name("EmbedoptLruAppend").Device(::tensorflow::DEVICE_CPU), LruAppendOp);

}  // namespace embedopt
