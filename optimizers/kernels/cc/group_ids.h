// Groups equal ids: the positions of a vector of ids ordered by (id, position).
//
// Every kernel that sums duplicate ids sums group u's rows in the order this
// gives, i.e. in input order, by one thread: the sums are then the same bits
// whatever the number of threads. Groups come out by ascending id.
#ifndef EMBEDOPT_KERNELS_GROUP_IDS_H_
#define EMBEDOPT_KERNELS_GROUP_IDS_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "common.h"

namespace embedopt {

enum class IdOrder { kStrictlyAscending, kNonDecreasing, kUnsorted };

// A `parallel_for` that runs everything on the calling thread (for grouping
// done as one task beside other work).
struct SerialFor {
  template <typename F>
  void operator()(int64_t total, int64_t /*cost_per_unit*/, const F& fn) const {
    if (total > 0) fn(0, total);
  }
};

template <typename Tindex>
IdOrder OrderOf(const Tindex* ids, int64_t n) {
  IdOrder order = IdOrder::kStrictlyAscending;
  for (int64_t i = 1; i < n; ++i) {
    if (ids[i] < ids[i - 1]) return IdOrder::kUnsorted;
    if (ids[i] == ids[i - 1]) order = IdOrder::kNonDecreasing;
  }
  return order;
}

class IdGroups {
 public:
  // Groups `ids[0..n)` (n <= kMaxIds). `parallel_for(total, cost_per_unit,
  // fn)` runs fn(begin, end) over [0, total), e.g. on the intra-op pool.
  template <typename Tindex, typename ParallelForFn>
  IdGroups(const Tindex* ids, int64_t n, const ParallelForFn& parallel_for) : starts_(n + 1, /*slot=*/0) {
    if (OrderOf(ids, n) != IdOrder::kUnsorted) {
      // Sorted input keeps its order: groups are runs, no sort needed.
      for (int64_t i = 0; i < n; ++i) {
        if (i == 0 || ids[i] != ids[i - 1]) starts_[size_++] = static_cast<uint32_t>(i);
      }
    } else if (RadixSort(ids, n, parallel_for)) {
      const uint64_t* keys = sorted_->get();
      for (int64_t k = 0; k < n; ++k) {
        if (k == 0 || (keys[k] >> 32) != (keys[k - 1] >> 32)) starts_[size_++] = static_cast<uint32_t>(k);
      }
    } else {
      for (int64_t k = 0; k < n; ++k) {
        if (k == 0 || ids[Position(k)] != ids[Position(k - 1)]) starts_[size_++] = static_cast<uint32_t>(k);
      }
    }
    starts_[size_] = static_cast<uint32_t>(n);
  }

  // The number of distinct ids.
  int64_t size() const { return size_; }
  // The number of ids.
  int64_t num_ids() const { return starts_[size_]; }
  // The first group whose ids start at or after sorted position k.
  int64_t FirstGroupFrom(int64_t k) const {
    return std::lower_bound(starts_.get(), starts_.get() + size_, static_cast<uint32_t>(k)) - starts_.get();
  }
  // Group u holds the ids at Position(k) for k in [Begin(u), End(u)).
  int64_t Begin(int64_t u) const { return starts_[u]; }
  int64_t End(int64_t u) const { return starts_[u + 1]; }
  int64_t Position(int64_t k) const { return sorted_ ? static_cast<int64_t>((*sorted_)[k] & 0xffffffffu) : k; }

  // Writes the grouping out: order[k] = Position(k) for k < num_ids(), starts[u] = Begin(u) for u <= size().
  void Export(int32_t* order, int32_t* starts) const {
    for (int64_t k = 0; k < num_ids(); ++k) order[k] = static_cast<int32_t>(Position(k));
    for (int64_t u = 0; u <= size_; ++u) starts[u] = static_cast<int32_t>(starts_[u]);
  }

 private:
  using Keys = ScratchBuffer<uint64_t>;
  static constexpr int kMaxDigitBits = 11;  // 2048 counters per chunk stay in L1
  // Below ~64k ids a pass takes ~0.1 ms: splitting it gained nothing
  // measurable on 2 cores and lost when another process held one of them.
  static constexpr int64_t kIdsPerChunk = 65536;
  static constexpr int64_t kMaxChunks = 8;

  // Fills sorted_ with keys ordered by (id, position), the position in the low
  // 32 bits. Returns whether the high 32 bits are the id's offset (then equal
  // ids have equal high bits), which holds unless the ids span over 2^32.
  template <typename Tindex, typename ParallelForFn>
  bool RadixSort(const Tindex* ids, int64_t n, const ParallelForFn& parallel_for) {
    Tindex lo = ids[0], hi = ids[0];
    for (int64_t i = 1; i < n; ++i) {
      lo = std::min(lo, ids[i]);
      hi = std::max(hi, ids[i]);
    }
    // Unsigned wrap-around gives the exact distance even for int64 extremes.
    const uint64_t base = static_cast<uint64_t>(static_cast<int64_t>(lo));
    auto offset = [&](int64_t i) { return static_cast<uint64_t>(static_cast<int64_t>(ids[i])) - base; };
    const uint64_t range = static_cast<uint64_t>(static_cast<int64_t>(hi)) - base;
    sorted_.reset(new Keys(n, /*slot=*/0));
    uint64_t* keys = sorted_->get();
    if (range >> 32 != 0) {
      // Ids spread over more than 2^32 (hashed int64 ids): a comparison sort.
      std::vector<std::pair<uint64_t, uint32_t>> pairs(n);
      for (int64_t i = 0; i < n; ++i) pairs[i] = {offset(i), static_cast<uint32_t>(i)};
      std::sort(pairs.begin(), pairs.end());
      for (int64_t k = 0; k < n; ++k) keys[k] = pairs[k].second;
      return false;
    }
    // Keys (id - lo) << 32 | position, sorted on their id bits by a stable
    // LSD radix sort, so equal ids stay in input order. Each pass counts
    // digits per chunk of the input, then every chunk scatters its keys to
    // its own offsets: chunks run in parallel and the result is the same
    // whatever runs where.
    const int bits = range == 0 ? 0 : 64 - __builtin_clzll(range);
    const int passes = (bits + kMaxDigitBits - 1) / kMaxDigitBits;
    const int digit_bits = passes == 0 ? 0 : (bits + passes - 1) / passes;
    const uint64_t mask = (uint64_t{1} << digit_bits) - 1;
    const int64_t buckets = int64_t{1} << digit_bits;
    const int64_t chunks = std::min(kMaxChunks, std::max<int64_t>(1, n / kIdsPerChunk));
    auto chunk_begin = [&](int64_t c) { return n * c / chunks; };
    // With one chunk, every pass's digit counts come from this one read of the ids (the keys keep their
    // digits through the passes, only their order changes). With several, a chunk's counts at pass p are of
    // the keys it holds then, so they are taken before each pass.
    std::vector<int64_t> counts(chunks * buckets);
    std::vector<int64_t> later_counts(chunks == 1 ? (passes > 1 ? (passes - 1) * buckets : 0) : 0);
    const int64_t chunk_cost = n / chunks * 4;
    if (chunks == 1) {
      int64_t* count = counts.data();
      int64_t* second = passes > 1 ? later_counts.data() : nullptr;
      for (int64_t i = 0; i < n; ++i) {
        const uint64_t o = offset(i);
        keys[i] = o << 32 | static_cast<uint64_t>(i);
        ++count[o & mask];
        if (passes == 2) {
          ++second[(o >> digit_bits) & mask];
        } else {
          for (int p = 1; p < passes; ++p) ++later_counts[(p - 1) * buckets + ((o >> (p * digit_bits)) & mask)];
        }
      }
    } else {
      parallel_for(chunks, chunk_cost, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          int64_t* count = counts.data() + c * buckets;
          for (int64_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) {
            keys[i] = offset(i) << 32 | static_cast<uint64_t>(i);
            ++count[offset(i) & mask];
          }
        }
      });
    }
    if (passes == 0) return true;
    std::unique_ptr<Keys> other(new Keys(n, /*slot=*/1));
    for (int p = 0; p < passes; ++p) {
      const uint64_t* from = sorted_->get();
      uint64_t* to = other->get();
      const int shift = 32 + p * digit_bits;
      if (p > 0 && chunks == 1) {
        std::copy(later_counts.begin() + (p - 1) * buckets, later_counts.begin() + p * buckets, counts.begin());
      } else if (p > 0) {
        std::fill(counts.begin(), counts.end(), 0);
        parallel_for(chunks, chunk_cost, [&](int64_t begin, int64_t end) {
          for (int64_t c = begin; c < end; ++c) {
            int64_t* count = counts.data() + c * buckets;
            for (int64_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) ++count[(from[i] >> shift) & mask];
          }
        });
      }
      // Digit-major offsets: chunk c's keys with digit d follow those of
      // smaller digits and those of earlier chunks with digit d.
      int64_t sum = 0;
      for (int64_t d = 0; d < buckets; ++d) {
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t here = counts[c * buckets + d];
          counts[c * buckets + d] = sum;
          sum += here;
        }
      }
      parallel_for(chunks, chunk_cost, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          int64_t* next = counts.data() + c * buckets;
          for (int64_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) to[next[(from[i] >> shift) & mask]++] = from[i];
        }
      });
      std::swap(sorted_, other);
    }
    return true;
  }

  std::unique_ptr<Keys> sorted_;  // null: the ids were sorted already
  ScratchBuffer<uint32_t> starts_;
  int64_t size_ = 0;
};

// A grouping made earlier (IdGroups::Export), read back: the same interface as IdGroups.
class GroupView {
 public:
  GroupView(const int32_t* order, const int32_t* starts, int64_t num_groups)
      : order_(order), starts_(starts), size_(num_groups) {}
  int64_t size() const { return size_; }
  int64_t num_ids() const { return starts_[size_]; }
  int64_t FirstGroupFrom(int64_t k) const {
    return std::lower_bound(starts_, starts_ + size_, static_cast<int32_t>(k)) - starts_;
  }
  int64_t Begin(int64_t u) const { return starts_[u]; }
  int64_t End(int64_t u) const { return starts_[u + 1]; }
  int64_t Position(int64_t k) const { return order_[k]; }

 private:
  const int32_t* order_;
  const int32_t* starts_;
  int64_t size_;
};

// Runs fn(u_begin, u_end) over all groups in parallel, split by ids rather
// than by groups: with skewed ids (Zipf) the first few groups hold most ids,
// and equal group counts would leave one thread most of the work. A group
// goes to the block holding its first id, so each is handled by one thread.
template <typename Groups, typename ParallelForFn, typename F>
void ParallelForGroups(const Groups& groups, const ParallelForFn& parallel_for, int64_t cost_per_id, const F& fn) {
  constexpr int64_t kIdsPerBlock = 1024;
  const int64_t n = groups.num_ids();
  const int64_t blocks = (n + kIdsPerBlock - 1) / kIdsPerBlock;
  parallel_for(blocks, cost_per_id * kIdsPerBlock, [&](int64_t begin, int64_t end) {
    const int64_t u_begin = groups.FirstGroupFrom(begin * kIdsPerBlock);
    const int64_t u_end = end == blocks ? groups.size() : groups.FirstGroupFrom(end * kIdsPerBlock);
    if (u_begin < u_end) fn(u_begin, u_end);
  });
}

// Prefetches the row of `values` that the sorted position k + kPrefetchAhead
// will read (sorted positions run on across groups, so this reaches ahead
// into the next groups too).
template <typename Groups, typename T>
inline void PrefetchGroupRow(const Groups& groups, int64_t k, const T* values, int64_t width) {
  if (k + kPrefetchAhead < groups.num_ids()) PrefetchRow(values + groups.Position(k + kPrefetchAhead) * width, width);
}

// acc[0..width) = the sum of group u's rows of `values` (rows of `width`
// elements), added in input order starting from the first row.
template <typename Groups, typename T, typename C>
inline void SumGroupRows(const Groups& groups, int64_t u, const T* values, int64_t width, C* acc) {
  const int64_t end = groups.End(u);
  int64_t k = groups.Begin(u);
  PrefetchGroupRow(groups, k, values, width);
  LoadRow(values + groups.Position(k) * width, width, acc);
  for (++k; k < end; ++k) {
    PrefetchGroupRow(groups, k, values, width);
    const T* row = values + groups.Position(k) * width;
    for (int64_t i = 0; i < width; ++i) acc[i] += static_cast<C>(row[i]);
  }
}

}  // namespace embedopt

#endif  // EMBEDOPT_KERNELS_GROUP_IDS_H_
