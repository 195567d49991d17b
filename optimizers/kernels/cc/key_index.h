// KeyIndex: the key -> row map of a DynamicEmbedding, an open-addressing hash
// table kept as a TensorFlow resource between steps.
//
// It is a cache: the truth is the layer's `row_keys[:rows_in_use]` variable
// (checkpointed), and the index is rebuilt from it whenever it may be out of
// date. Linear probing over 2^k slots with at most one key per two slots;
// removal shifts the following entries back (no tombstones), so a table that
// evicts thousands of keys a step never degrades. Keys are any int64.
#ifndef EMBEDOPT_KERNELS_KEY_INDEX_H_
#define EMBEDOPT_KERNELS_KEY_INDEX_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common.h"
#include "distinct_keys.h"
#include "lfu_buckets.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_base.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/platform/mutex.h"

namespace embedopt {

// SplitMix64's finalizer: the key index's slots and the count-min sketch's
// columns (optimizers/dynamic_ops.py: sketch_buckets) both hash with it.
inline uint64_t SplitMix64Finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class KeyIndex : public ::tensorflow::ResourceBase {
 public:
  // Step stamp of an index that must be rebuilt before use.
  static constexpr int64_t kStale = -1;

  std::string DebugString() const override {
    return absl::StrCat("embedopt KeyIndex of ", size_, " keys in ", slots_.size(), " slots");
  }

  ::tensorflow::mutex* mu() { return &mu_; }

  // The layer's `steps` counter when the index last matched `row_keys`:
  // every training step that goes through the index stamps it with its
  // step, so a step of another path (or a restore) shows as a mismatch.
  int64_t synced_step() const { return synced_step_; }
  void set_synced_step(int64_t step) { synced_step_ = step; }

  // Empties the index and sizes it for `capacity` keys.
  void Reset(int64_t capacity) {
    uint64_t slots = 16;
    while (slots < 2 * static_cast<uint64_t>(capacity)) slots <<= 1;
    slots_.assign(slots, Slot{0, kEmpty});
    mask_ = slots - 1;
    size_ = 0;
    capacity_ = capacity;
    lfu_.Clear();
    removed_.clear();
    inserted_.clear();
  }

  // A policy step's removals and insertions, kept to be made later, by
  // ApplyDeferred: the policy op hands them over so that the next step's
  // unique op makes them beside its dedup, which does not read the index.
  // Every other reader of the index makes them first.
  void Defer(std::vector<int64_t> removed_keys, std::vector<std::pair<int64_t, int64_t>> inserted) {
    ApplyDeferred();
    removed_ = std::move(removed_keys);
    inserted_ = std::move(inserted);
  }

  bool has_deferred() const { return !removed_.empty() || !inserted_.empty(); }

  // Removes the deferred keys, then inserts the deferred (key, row) pairs.
  void ApplyDeferred() {
    const int64_t num_removed = static_cast<int64_t>(removed_.size());
    for (int64_t j = 0; j < num_removed; ++j) {
      if (j + kFarAhead < num_removed) Prefetch(removed_[j + kFarAhead]);
      Remove(removed_[j]);
    }
    const int64_t num_inserted = static_cast<int64_t>(inserted_.size());
    for (int64_t j = 0; j < num_inserted; ++j) {
      if (j + kFarAhead < num_inserted) Prefetch(inserted_[j + kFarAhead].first);
      Insert(inserted_[j].first, inserted_[j].second);
    }
    removed_.clear();
    inserted_.clear();
  }

  int64_t capacity() const { return capacity_; }

  // Scratch for the unique op: empty whenever the lock is free.
  DistinctKeys& distinct_keys() { return distinct_keys_; }
  // The LFU eviction order (LFU tables; EmbedoptDynamicPolicy keeps it), forgotten by every Reset.
  LfuBuckets& lfu() { return lfu_; }
  int64_t size() const { return size_; }

  // The row of `key`, or -1.
  int64_t Find(int64_t key) const {
    for (uint64_t i = Home(key);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.row == kEmpty) return -1;
      if (s.key == key) return s.row;
    }
  }

  // Starts loading the slot where a probe for `key` begins.
  void Prefetch(int64_t key) const { __builtin_prefetch(&slots_[Home(key)], 0); }

  // Maps `key` to `row` (a new key, or a new row for a key already there).
  // The caller keeps size() <= capacity().
  void Insert(int64_t key, int64_t row) {
    for (uint64_t i = Home(key);; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.row == kEmpty) {
        s = Slot{key, row};
        ++size_;
        return;
      }
      if (s.key == key) {
        s.row = row;
        return;
      }
    }
  }

  // Removes `key` if present, shifting later entries of its probe run back.
  void Remove(int64_t key) {
    uint64_t i = Home(key);
    for (;; i = (i + 1) & mask_) {
      if (slots_[i].row == kEmpty) return;
      if (slots_[i].key == key) break;
    }
    for (uint64_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
      if (slots_[j].row == kEmpty) break;
      const uint64_t home = Home(slots_[j].key);
      // Entry j may move to the hole at i unless its home lies cyclically in (i, j].
      const bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (!stays) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i].row = kEmpty;
    --size_;
  }

  // Calls fn(key, row) for every entry, in slot order.
  template <typename F>
  void ForEach(const F& fn) const {
    for (const Slot& s : slots_) {
      if (s.row != kEmpty) fn(s.key, s.row);
    }
  }

 private:
  static constexpr int64_t kEmpty = -1;
  struct Slot {
    int64_t key;
    int64_t row;
  };

  // SplitMix64's finalizer: hashed keys (fingerprints) and small ids alike spread over the slots.
  uint64_t Home(int64_t key) const { return SplitMix64Finalize(static_cast<uint64_t>(key)) & mask_; }

  ::tensorflow::mutex mu_;
  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
  int64_t size_ = 0;
  int64_t capacity_ = 0;
  int64_t synced_step_ = kStale;
  DistinctKeys distinct_keys_;
  LfuBuckets lfu_;
  std::vector<int64_t> removed_;                      // deferred removals
  std::vector<std::pair<int64_t, int64_t>> inserted_;  // deferred insertions: (key, row)
};

// The KeyIndex that input `i` of the op names (created empty and out of date on first use).
inline absl::Status GetKeyIndex(::tensorflow::OpKernelContext* ctx, int i,
                                ::tensorflow::core::RefCountPtr<KeyIndex>* index) {
  return ::tensorflow::LookupOrCreateResource<KeyIndex>(ctx, ::tensorflow::HandleFromInput(ctx, i), index,
                                                        [](KeyIndex** created) {
                                                          *created = new KeyIndex();
                                                          return absl::OkStatus();
                                                        });
}

}  // namespace embedopt

#endif  // EMBEDOPT_KERNELS_KEY_INDEX_H_
