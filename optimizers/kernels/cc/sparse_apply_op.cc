// EmbedoptSparseApply: dedup, gather, rule and scatter of a sparse gradient
// in one pass over the touched rows of a resource variable and its slots.
#define EIGEN_USE_THREADS  // training_op_helpers.h copies tensors on the CPU device

#include <array>
#include <string>
#include <vector>

#include "common.h"
#include "group_ids.h"
#include "row_rules.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace embedopt {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using CPUDevice = Eigen::ThreadPoolDevice;

REGISTER_OP("EmbedoptSparseApply")
    .Input("var: resource")
    .Input("slots: N * resource")
    .Input("indices: Tindices")
    .Input("values: T")
    .Input("hypers: Thyper")
    .Attr("N: int >= 0")
    .Attr("T: {float, double, half, bfloat16}")
    .Attr("Tindices: {int32, int64}")
    .Attr("Thyper: {float, double} = DT_FLOAT")
    .Attr("rule: {'sgd', 'momentum', 'adagrad', 'rowwise_adagrad', 'adam', 'ftrl'}")
    .Attr("nesterov: bool = false")
    .Attr("weight_decay: bool = false")
    .Attr("assume_unique: bool = false")
    .Attr("use_locking: bool = false")
    .SetIsStateful()  // it writes its variables: never pruned, folded or merged
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      ::tensorflow::shape_inference::ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(n + 1), 1, &unused));
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(n + 2), 1, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(n + 3), 1, &unused));
      return absl::OkStatus();
    });

struct RuleInfo {
  const char* name;
  int num_slots;
  int num_hypers;
  const char* hypers;
};

enum RuleId { kSgd, kMomentum, kAdagrad, kRowwiseAdagrad, kAdam, kFtrl };
constexpr std::array<RuleInfo, 6> kRules = {{
    {"sgd", 0, 1, "[lr]"},
    {"momentum", 1, 2, "[lr, momentum]"},
    {"adagrad", 1, 2, "[lr, epsilon]"},
    {"rowwise_adagrad", 1, 2, "[lr, epsilon]"},
    {"adam", 2, 5, "[lr, beta_1, beta_2, epsilon, step]"},
    {"ftrl", 2, 6, "[lr, lr_power, l1, l2, l2_shrinkage, beta]"},
}};

// What the shared loop needs: the variable, its slots (a slot row has
// slot_width[s] elements: the var's width, or 1 for a row-wise accumulator),
// and the gradient, grouped by id unless its ids are known to be unique.
template <typename T, typename Tindex>
struct Step {
  T* var;
  int64_t width;
  int num_slots;
  std::array<T*, 2> slots;
  std::array<int64_t, 2> slot_width;
  const Tindex* ids;
  const T* values;
  const IdGroups* groups;  // nullptr: row u of values is the gradient of ids[u]
  int64_t num_updates;
  bool decay;
};

// The table row that update u writes.
template <typename T, typename Tindex>
inline int64_t RowOf(const Step<T, Tindex>& s, int64_t u) {
  return static_cast<int64_t>(s.ids[s.groups ? s.groups->Position(s.groups->Begin(u)) : u]);
}

// An update does more work than one row of a gather (it sums its group, then
// updates the var and slot rows), so fewer of them ahead cover a miss.
constexpr int64_t kRowsAhead = 4;

// The one dedup-gather-rule-scatter loop, parallel over distinct rows; each
// row (and its slot rows) is read, updated and written by one thread.
// `rule(var_row, slot_rows, grad_row, width)` updates one row in place.
template <typename T, typename Tindex, typename C, typename Rule>
void UpdateRows(OpKernelContext* ctx, const Step<T, Tindex>& s, C lr, C wd, const Rule& rule) {
  constexpr bool kInPlace = std::is_same<T, C>::value;
  const int64_t width = s.width;
  auto update = [&](int64_t begin, int64_t end) {
    // grad | var | slot 0 | slot 1, each `width` wide, in the compute type.
    std::vector<C> scratch(width * 4);
    C* grad_buffer = scratch.data();
    for (int64_t u = begin; u < end; ++u) {
      if (u + kRowsAhead < end) {
        // The rows a few updates ahead: the table and its slots are too large to cache.
        const int64_t ahead = RowOf(s, u + kRowsAhead);
        PrefetchRow(s.var + ahead * width, width, /*for_write=*/true);
        for (int k = 0; k < s.num_slots; ++k) PrefetchRow(s.slots[k] + ahead * s.slot_width[k], s.slot_width[k], true);
      }
      const int64_t first = s.groups ? s.groups->Position(s.groups->Begin(u)) : u;
      const int64_t row = RowOf(s, u);
      const C* grad;
      if (s.groups && s.groups->End(u) - s.groups->Begin(u) > 1) {
        SumGroupRows(*s.groups, u, s.values, width, grad_buffer);
        grad = grad_buffer;
      } else if constexpr (kInPlace) {
        grad = s.values + first * width;
      } else {
        LoadRow(s.values + first * width, width, grad_buffer);
        grad = grad_buffer;
      }
      T* var_row = s.var + row * width;
      std::array<T*, 2> slot_rows = {nullptr, nullptr};
      std::array<C*, 2> slot_values = {nullptr, nullptr};
      for (int k = 0; k < s.num_slots; ++k) slot_rows[k] = s.slots[k] + row * s.slot_width[k];
      C* var_value;
      if constexpr (kInPlace) {
        var_value = var_row;
        slot_values = slot_rows;
      } else {
        var_value = scratch.data() + width;
        LoadRow(var_row, width, var_value);
        for (int k = 0; k < s.num_slots; ++k) {
          slot_values[k] = scratch.data() + (2 + k) * width;
          LoadRow(slot_rows[k], s.slot_width[k], slot_values[k]);
        }
      }
      if (s.decay) rules::decoupled_weight_decay(var_value, width, lr, wd);
      rule(var_value, slot_values, grad, width);
      if constexpr (!kInPlace) {
        StoreRow(var_value, width, var_row);
        for (int k = 0; k < s.num_slots; ++k) StoreRow(slot_values[k], s.slot_width[k], slot_rows[k]);
      }
    }
  };
  // Cycles: ~2 per gradient element summed, ~6 per row element updated.
  const int64_t row_cost = width * 6 * (1 + s.num_slots) + 50;
  if (s.groups) {
    const int64_t per_id = width * 2 + row_cost * s.num_updates / s.groups->num_ids();
    ParallelForGroups(*s.groups, IntraOpPool{ctx}, per_id, update);
  } else {
    ParallelFor(ctx, s.num_updates, row_cost, update);
  }
}

template <typename T, typename Tindex, typename Thyper>
class SparseApplyOp : public OpKernel {
 public:
  explicit SparseApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string rule;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rule", &rule));
    for (int r = 0; r < static_cast<int>(kRules.size()); ++r) {
      if (rule == kRules[r].name) rule_ = static_cast<RuleId>(r);
    }
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_slots_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("nesterov", &nesterov_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("weight_decay", &decay_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("assume_unique", &assume_unique_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("use_locking", &use_locking_));
    const RuleInfo& info = kRules[rule_];
    OP_REQUIRES(ctx, num_slots_ == info.num_slots,
                absl::InvalidArgumentError(absl::StrCat("slots: rule '", info.name, "' takes ", info.num_slots,
                                                        " slot variables, got ", num_slots_)));
    OP_REQUIRES(ctx, !nesterov_ || rule_ == kMomentum,
                absl::InvalidArgumentError(absl::StrCat("nesterov: only rule 'momentum' takes it, not '",
                                                        info.name, "'")));
  }

  void Compute(OpKernelContext* ctx) override {
    const RuleInfo& info = kRules[rule_];
    const Tensor& indices = ctx->input(num_slots_ + 1);
    const Tensor& values = ctx->input(num_slots_ + 2);
    const Tensor& hypers = ctx->input(num_slots_ + 3);
    OP_REQUIRES_OK(ctx, CheckIdVector("indices", indices));
    const int num_hypers = info.num_hypers + (decay_ ? 1 : 0);
    OP_REQUIRES(ctx, hypers.dims() == 1 && hypers.NumElements() == num_hypers,
                absl::InvalidArgumentError(absl::StrCat(
                    "hypers: rule '", info.name, "' takes ", num_hypers, " values ", info.hypers,
                    decay_ ? " + [weight_decay]" : "", ", got shape ", hypers.shape().DebugString())));
    std::vector<int> inputs;
    for (int i = 0; i <= num_slots_; ++i) {
      inputs.push_back(i);
      OP_REQUIRES_OK(ctx, CheckVariable<T>(ctx, i, i == 0 ? "var" : "slots"));
    }
    auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<CPUDevice, T>(ctx, use_locking_,
                                                                                  /*sparse=*/true, inputs);
    std::vector<Tensor> vars(num_slots_ + 1);
    for (int i = 0; i <= num_slots_; ++i) {
      OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<CPUDevice, T>(ctx, i, use_locking_,
                                                                               /*sparse=*/true, &vars[i]));
    }
    for (const Tensor& v : vars) AdviseHugePages(v.tensor_data().data(), v.TotalBytes());
    const Tensor& var = vars[0];
    OP_REQUIRES(ctx, var.dims() >= 1,
                absl::InvalidArgumentError(absl::StrCat("var must have rank >= 1, got shape ",
                                                        var.shape().DebugString())));
    const int64_t rows = var.dim_size(0);
    const TensorShape slot_shape = rule_ == kRowwiseAdagrad ? TensorShape({rows}) : var.shape();
    for (int k = 0; k < num_slots_; ++k) {
      OP_REQUIRES(ctx, vars[k + 1].shape() == slot_shape,
                  absl::InvalidArgumentError(absl::StrCat("slots[", k, "] must have shape ",
                                                          slot_shape.DebugString(), " for rule '", info.name,
                                                          "', got ", vars[k + 1].shape().DebugString())));
    }
    const int64_t n = indices.NumElements();
    OP_REQUIRES_OK(ctx, CheckRows("values", values, n, "len(indices)", var.shape(), "var"));
    const int64_t width = RowWidth(var);
    if (n == 0 || width == 0) return;
    const Tindex* ids = indices.flat<Tindex>().data();
    const int64_t bad = FirstOutOfRange(ids, n, rows);
    OP_REQUIRES(ctx, bad < 0, OutOfRange("indices", bad, static_cast<int64_t>(ids[bad]), rows, "var"));

    std::unique_ptr<IdGroups> groups;
    if (!assume_unique_ && OrderOf(ids, n) != IdOrder::kStrictlyAscending) {
      groups.reset(new IdGroups(ids, n, IntraOpPool{ctx}));
    }
    Step<T, Tindex> step{vars[0].flat<T>().data(), width, num_slots_, {nullptr, nullptr}, {0, 0}, ids,
                         values.flat<T>().data(), groups.get(), groups ? groups->size() : n, decay_};
    for (int k = 0; k < num_slots_; ++k) {
      step.slots[k] = vars[k + 1].flat<T>().data();
      step.slot_width[k] = rule_ == kRowwiseAdagrad ? 1 : width;
    }
    Run(ctx, step, hypers.flat<Thyper>().data());
  }

 private:
  using C = ComputeType<T>;

  // Binds the hyper-parameters of the rule and runs the shared loop with it.
  void Run(OpKernelContext* ctx, const Step<T, Tindex>& step, const Thyper* raw) {
    std::array<C, 7> h{};
    for (int i = 0; i < kRules[rule_].num_hypers + (decay_ ? 1 : 0); ++i) h[i] = static_cast<C>(raw[i]);
    const C lr = h[0];
    const C wd = decay_ ? h[kRules[rule_].num_hypers] : C(0);
    using Slots = std::array<C*, 2>;
    switch (rule_) {
      case kSgd:
        return UpdateRows(ctx, step, lr, wd, [&](C* v, const Slots&, const C* g, int64_t w) {
          rules::sgd(v, g, w, lr);
        });
      case kMomentum: {
        const bool nesterov = nesterov_;
        return UpdateRows(ctx, step, lr, wd, [&](C* v, const Slots& s, const C* g, int64_t w) {
          rules::momentum(v, s[0], g, w, lr, h[1], nesterov);
        });
      }
      case kAdagrad:
        return UpdateRows(ctx, step, lr, wd, [&](C* v, const Slots& s, const C* g, int64_t w) {
          rules::adagrad(v, s[0], g, w, lr, h[1]);
        });
      case kRowwiseAdagrad:
        return UpdateRows(ctx, step, lr, wd, [&](C* v, const Slots& s, const C* g, int64_t w) {
          rules::rowwise_adagrad(v, s[0], g, w, lr, h[1]);
        });
      case kAdam: {
        const C alpha = rules::adam_alpha(lr, h[1], h[2], h[4]);
        return UpdateRows(ctx, step, lr, wd, [&](C* v, const Slots& s, const C* g, int64_t w) {
          rules::adam(v, s[0], s[1], g, w, alpha, h[1], h[2], h[3]);
        });
      }
      case kFtrl:
        return UpdateRows(ctx, step, lr, wd, [&](C* v, const Slots& s, const C* g, int64_t w) {
          rules::ftrl(v, s[0], s[1], g, w, lr, h[1], h[2], h[3], h[4], h[5]);
        });
    }
  }

  RuleId rule_ = kSgd;
  int num_slots_ = 0;
  bool nesterov_ = false;
  bool decay_ = false;
  bool assume_unique_ = false;
  bool use_locking_ = false;
};

#define EMBEDOPT_REGISTER_APPLY(T, Tindex, Thyper)                                                 \
  REGISTER_KERNEL_BUILDER(Name("EmbedoptSparseApply")                                             \
                              .Device(::tensorflow::DEVICE_CPU)                                   \
                              .TypeConstraint<T>("T")                                             \
                              .TypeConstraint<Tindex>("Tindices")                                 \
                              .TypeConstraint<Thyper>("Thyper"),                                  \
                          SparseApplyOp<T, Tindex, Thyper>)

#define EMBEDOPT_REGISTER_APPLY_T(T)            \
  EMBEDOPT_REGISTER_APPLY(T, int32_t, float);   \
  EMBEDOPT_REGISTER_APPLY(T, int64_t, float);   \
  EMBEDOPT_REGISTER_APPLY(T, int32_t, double);  \
  EMBEDOPT_REGISTER_APPLY(T, int64_t, double)

EMBEDOPT_REGISTER_APPLY_T(float);
EMBEDOPT_REGISTER_APPLY_T(double);
EMBEDOPT_REGISTER_APPLY_T(Eigen::half);
EMBEDOPT_REGISTER_APPLY_T(Eigen::bfloat16);

}  // namespace embedopt
