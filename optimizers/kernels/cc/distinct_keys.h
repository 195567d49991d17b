// DistinctKeys: numbers a batch's distinct int64 keys in first-occurrence
// order, for EmbedoptKeyIndexUnique.
//
// An open-addressing set of (key, number) slots, at most half full, kept
// between calls so that a step neither allocates nor clears it whole: it
// doubles when a batch brings more distinct keys than it holds, and
// `Clear` empties only the slots the batch used. Each probe reads one 16-byte
// slot holding the key itself, where a set of numbers alone would read the key
// back from the list of distinct keys, a second scattered read.
#ifndef EMBEDOPT_KERNELS_DISTINCT_KEYS_H_
#define EMBEDOPT_KERNELS_DISTINCT_KEYS_H_

#include <cstdint>
#include <vector>

namespace embedopt {

class DistinctKeys {
 public:
  // The number of `key` (0, 1, 2, ... in first-occurrence order since the
  // last Clear); a new key is appended to `*unique`.
  int32_t Insert(int64_t key, std::vector<int64_t>* unique) {
    if (2 * (unique->size() + 1) > slots_.size()) Grow(*unique);
    for (uint64_t i = Home(key);; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.number < 0) {
        s = Slot{key, static_cast<int32_t>(unique->size())};
        used_.push_back(i);
        unique->push_back(key);
        return s.number;
      }
      if (s.key == key) return s.number;
    }
  }

  // Starts loading the slot where a probe for `key` begins.
  void Prefetch(int64_t key) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[Home(key)], 1);
  }

  // Empties the set: O(keys inserted since the last Clear).
  void Clear() {
    for (uint64_t i : used_) slots_[i].number = -1;
    used_.clear();
  }

 private:
  struct Slot {
    int64_t key;
    int32_t number;  // -1: empty
  };

  // Fibonacci hashing: the top bits of key * 2^64 / phi, for fingerprints and small ids alike.
  uint64_t Home(int64_t key) const { return (static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> shift_; }

  // Doubles the slots (16 at first) and re-inserts `unique` with its numbers.
  void Grow(const std::vector<int64_t>& unique) {
    uint64_t size = 16;
    int bits = 4;
    while (size <= slots_.size()) {
      size <<= 1;
      ++bits;
    }
    slots_.assign(size, Slot{0, -1});
    mask_ = size - 1;
    shift_ = 64 - bits;
    used_.clear();
    for (size_t n = 0; n < unique.size(); ++n) {
      uint64_t i = Home(unique[n]);
      while (slots_[i].number >= 0) i = (i + 1) & mask_;
      slots_[i] = Slot{unique[n], static_cast<int32_t>(n)};
      used_.push_back(i);
    }
  }

  std::vector<Slot> slots_;
  std::vector<uint64_t> used_;
  uint64_t mask_ = 0;
  int shift_ = 64;
};

}  // namespace embedopt

#endif  // EMBEDOPT_KERNELS_DISTINCT_KEYS_H_
