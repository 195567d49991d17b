// The bags of a pooled lookup (ids, row splits, optional weights, combiner),
// shared by EmbedoptPooledLookup and its gradient.
#ifndef EMBEDOPT_KERNELS_BAGS_H_
#define EMBEDOPT_KERNELS_BAGS_H_

#include <cmath>
#include <string>

#include "common.h"

namespace embedopt {

using ::tensorflow::OpKernelConstruction;

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

}  // namespace embedopt

#endif  // EMBEDOPT_KERNELS_BAGS_H_
