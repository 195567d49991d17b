// LfuBuckets: the LFU eviction order of DynamicEmbedding for
// EmbedoptDynamicPolicy, kept across steps so that no step scans the table.
//
// The order (optimizers/dynamic_ops.py: lfu_victims, the TF path's top_k) is
// by the key (min(count, 2^31-1), min(last_seen, 2^32-1), row), smallest
// first, over the rows in use that the batch does not read. Here:
//
//   - counts 0 .. B-1 (B = 4096) each have a FIFO bucket of (row, step)
//     entries, and a bitmap of the non-empty buckets finds the lowest;
//     counts >= B share a min-heap of (clamped count, step, row) entries;
//   - after each step, Append adds one entry per row the step read or
//     assigned, with that row's new count and the step, in ascending row
//     order, so every bucket is in (step, row) order: the tie order;
//   - an entry is live while its row's clamped count and last_seen are still
//     the entry's; reading or reassigning the row kills it for good, and a
//     dead entry is dropped when met. Every row in use has exactly one live
//     entry, except the rows this step read: their counts and last_seen
//     were written before the victims are picked, so their entries are dead.
//     Walking the buckets from the lowest, then the heap, therefore yields
//     the victims in the TF path's order;
//   - when the entries exceed 2 x capacity, Append first drops the dead ones
//     (O(capacity), at most once per capacity appended entries).
//
// The structure is a cache of the variables, like the KeyIndex that owns it:
// it is (re)built from row_counts and last_seen, with one sort of the rows in
// use, by the first step that evicts after a reset or a step it did not see.
// Steps past 2^32 - 1, where last_seen is clamped and the FIFO order no
// longer is the tie order, pick victims by one scan of the rows instead.
#ifndef EMBEDOPT_KERNELS_LFU_BUCKETS_H_
#define EMBEDOPT_KERNELS_LFU_BUCKETS_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "group_ids.h"

namespace embedopt {

constexpr int64_t kLfuMaxCount = (int64_t{1} << 31) - 1;
constexpr int64_t kLfuMaxStep = (int64_t{1} << 32) - 1;

inline int64_t LfuCount(int64_t count) { return std::min(std::max<int64_t>(count, 0), kLfuMaxCount); }
inline int64_t LfuStep(int64_t step) { return std::min(std::max<int64_t>(step, 0), kLfuMaxStep); }

class LfuBuckets {
 public:
  static constexpr int64_t kStale = -1;

  explicit LfuBuckets(int64_t num_buckets = 4096) : num_buckets_(num_buckets) {}

  // Forgets every entry: the next step that evicts rebuilds from the variables.
  void Clear() {
    buckets_.clear();
    buckets_.shrink_to_fit();
    nonempty_.clear();
    heap_.clear();
    heap_.shrink_to_fit();
    stored_ = 0;
    synced_step_ = kStale;
  }

  // The `num_evict` rows below `used` with the smallest LFU keys, excluding
  // those stamped `step` (this batch's), in that order, taken off the
  // structure. `counts` and `last_seen` hold this step's writes to the rows
  // it read so far (none to the rows it assigns yet).
  absl::Status Victims(const int64_t* counts, const int64_t* last_seen, int64_t used, int64_t step,
                       int64_t num_evict, std::vector<int64_t>* victims) {
    victims->clear();
    if (num_evict <= 0) return absl::OkStatus();
    if (used > (int64_t{1} << 32)) return absl::InvalidArgumentError("LFU tables hold at most 2^32 rows");
    if (step > kLfuMaxStep) return Scan(counts, last_seen, used, step, num_evict, victims);
    if (synced_step_ != step - 1) Rebuild(counts, last_seen, used, step);
    victims->reserve(num_evict);
    auto take = [&](uint32_t row, int64_t count, uint32_t entry_step) {
      if (Live(counts, last_seen, row, count, entry_step)) victims->push_back(row);
    };
    for (size_t w = 0; w < nonempty_.size() && Short(victims, num_evict); ++w) {
      while (nonempty_[w] != 0 && Short(victims, num_evict)) {
        const int64_t c = static_cast<int64_t>(w) * 64 + __builtin_ctzll(nonempty_[w]);
        Bucket& b = buckets_[c];
        for (; b.head < b.entries.size() && Short(victims, num_evict); ++b.head) {
          take(b.entries[b.head].row, c, b.entries[b.head].step);
        }
        if (b.head == b.entries.size()) {
          stored_ -= static_cast<int64_t>(b.entries.size());
          b.entries.clear();
          b.head = 0;
          nonempty_[w] &= nonempty_[w] - 1;
        }
      }
    }
    while (!heap_.empty() && Short(victims, num_evict)) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<HeapEntry>());
      const HeapEntry e = heap_.back();
      heap_.pop_back();
      --stored_;
      take(e.row, e.count, e.step);
    }
    if (Short(victims, num_evict)) {
      return absl::InvalidArgumentError("DynamicEmbedding: the LFU buckets hold fewer live rows than needed");
    }
    return absl::OkStatus();
  }

  // Adds the distinct `rows` this step read or assigned (each < capacity, its
  // count and last_seen written), in ascending row order, once the structure
  // is kept and saw every step before this one; else leaves it out of date.
  void Append(const int64_t* counts, const int64_t* last_seen, const std::vector<int64_t>& rows, int64_t step,
              int64_t capacity) {
    if (synced_step_ == kStale || synced_step_ != step - 1 || step > kLfuMaxStep) {
      if (synced_step_ != kStale) Clear();
      return;
    }
    if (stored_ > 2 * capacity) Compact(counts, last_seen);
    const int64_t n = static_cast<int64_t>(rows.size());
    // Ascending through the ids' radix sort (group_ids.h), as the LRU log's append.
    const IdGroups sorted(rows.data(), n, SerialFor{});
    for (int64_t k = 0; k < n; ++k) {
      const int64_t row = rows[sorted.Position(k)];
      Add(static_cast<uint32_t>(row), LfuCount(counts[row]), static_cast<uint32_t>(step));
    }
    synced_step_ = step;
  }

 private:
  struct Entry {
    uint32_t row;
    uint32_t step;
  };
  struct Bucket {
    std::vector<Entry> entries;
    size_t head = 0;  // entries before it were taken
  };
  struct HeapEntry {
    uint32_t count;
    uint32_t step;
    uint32_t row;
    bool operator>(const HeapEntry& o) const {
      return std::tie(count, step, row) > std::tie(o.count, o.step, o.row);
    }
  };

  // An entry is live while its row still has the entry's clamped count and last-seen step.
  static bool Live(const int64_t* counts, const int64_t* last_seen, uint32_t row, int64_t count, uint32_t step) {
    return LfuCount(counts[row]) == count && LfuStep(last_seen[row]) == step;
  }

  static bool Short(const std::vector<int64_t>* victims, int64_t num_evict) {
    return static_cast<int64_t>(victims->size()) < num_evict;
  }

  void Add(uint32_t row, int64_t count, uint32_t step) {
    ++stored_;
    if (count >= num_buckets_) {
      heap_.push_back(HeapEntry{static_cast<uint32_t>(count), step, row});
      std::push_heap(heap_.begin(), heap_.end(), std::greater<HeapEntry>());
      return;
    }
    buckets_[count].entries.push_back(Entry{row, step});
    nonempty_[count / 64] |= uint64_t{1} << (count % 64);
  }

  // Entries for the rows below `used` not stamped `step`, in key order: one sort, after a reset.
  void Rebuild(const int64_t* counts, const int64_t* last_seen, int64_t used, int64_t step) {
    Clear();
    buckets_.resize(num_buckets_);
    nonempty_.assign((num_buckets_ + 63) / 64, 0);
    std::vector<std::pair<uint64_t, uint32_t>> order = Evictable(counts, last_seen, used, step);
    std::sort(order.begin(), order.end());
    for (const auto& [key, row] : order) Add(row, static_cast<int64_t>(key >> 32), static_cast<uint32_t>(key));
    synced_step_ = step - 1;
  }

  // Keeps only the live entries, in order.
  void Compact(const int64_t* counts, const int64_t* last_seen) {
    stored_ = 0;
    for (int64_t c = 0; c < num_buckets_; ++c) {
      Bucket& b = buckets_[c];
      size_t kept = 0;
      for (size_t i = b.head; i < b.entries.size(); ++i) {
        const Entry e = b.entries[i];
        if (Live(counts, last_seen, e.row, c, e.step)) b.entries[kept++] = e;
      }
      b.entries.resize(kept);
      b.head = 0;
      stored_ += static_cast<int64_t>(kept);
      if (kept == 0) nonempty_[c / 64] &= ~(uint64_t{1} << (c % 64));
    }
    auto dead = [&](const HeapEntry& e) { return !Live(counts, last_seen, e.row, e.count, e.step); };
    heap_.erase(std::remove_if(heap_.begin(), heap_.end(), dead), heap_.end());
    std::make_heap(heap_.begin(), heap_.end(), std::greater<HeapEntry>());
    stored_ += static_cast<int64_t>(heap_.size());
  }

  // (key, row) for the rows below `used` not stamped `step`: key = clamped count << 32 | clamped last_seen.
  static std::vector<std::pair<uint64_t, uint32_t>> Evictable(const int64_t* counts, const int64_t* last_seen,
                                                              int64_t used, int64_t step) {
    std::vector<std::pair<uint64_t, uint32_t>> order;
    order.reserve(used);
    for (int64_t r = 0; r < used; ++r) {
      if (last_seen[r] == step) continue;
      const uint64_t count = static_cast<uint64_t>(LfuCount(counts[r]));
      order.emplace_back(count << 32 | static_cast<uint64_t>(LfuStep(last_seen[r])), static_cast<uint32_t>(r));
    }
    return order;
  }

  // The victims by one partial sort of the rows in use (steps past 2^32 - 1 only).
  static absl::Status Scan(const int64_t* counts, const int64_t* last_seen, int64_t used, int64_t step,
                           int64_t num_evict, std::vector<int64_t>* victims) {
    std::vector<std::pair<uint64_t, uint32_t>> order = Evictable(counts, last_seen, used, step);
    if (static_cast<int64_t>(order.size()) < num_evict) {
      return absl::InvalidArgumentError("DynamicEmbedding: fewer evictable rows than needed");
    }
    std::partial_sort(order.begin(), order.begin() + num_evict, order.end());
    for (int64_t k = 0; k < num_evict; ++k) victims->push_back(order[k].second);
    return absl::OkStatus();
  }

  int64_t num_buckets_;
  std::vector<Bucket> buckets_;
  std::vector<uint64_t> nonempty_;  // bit c: bucket c holds entries
  std::vector<HeapEntry> heap_;     // counts >= num_buckets_
  int64_t stored_ = 0;              // entries held, live or dead
  int64_t synced_step_ = kStale;    // the step whose end state the entries describe
};

}  // namespace embedopt

#endif  // EMBEDOPT_KERNELS_LFU_BUCKETS_H_
