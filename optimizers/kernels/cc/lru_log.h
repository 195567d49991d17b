// The LRU eviction log of DynamicEmbedding (optimizers/dynamic_lru.py) on
// the log's variables, in place, for EmbedoptDynamicPolicy. Same entries,
// same order, same head and tail as the TF ops (the module docstring of
// dynamic_lru.py states the algorithm):
//
//   Victims  builds the log on first need, then takes the first `num_evict`
//            live entries from the head;
//   Append   appends a step's rows, ascending, compacting the log to its live
//            entries first when the ring would overrun.
//
// An entry (row r, step s) at position p (ring index p % size) is live while
// last_seen[r] == s.
#ifndef EMBEDOPT_KERNELS_LRU_LOG_H_
#define EMBEDOPT_KERNELS_LRU_LOG_H_

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "group_ids.h"

namespace embedopt {

// The log's variables: pointers into last_seen [capacity], log_rows and
// log_steps [size], head and tail (scalars). The caller holds their locks.
struct LruLog {
  int64_t* stamps;
  int64_t capacity;
  int64_t* rows;
  int64_t* steps;
  int64_t size;
  int64_t* head;
  int64_t* tail;

  int64_t& row_at(int64_t position) { return rows[position % size]; }
  int64_t& step_at(int64_t position) { return steps[position % size]; }
  bool Live(int64_t position) { return stamps[row_at(position)] == step_at(position); }

  // The `num_evict` least recently used rows not stamped `step`, in LRU order
  // (ties to the lower row), consumed from the head; builds the log from
  // last_seen[:used] first if it is not kept yet (tail == 0).
  absl::Status Victims(int64_t num_evict, int64_t step, int64_t used, std::vector<int64_t>* victims) {
    if (*tail <= 0) {
      // First need: the rows in use not stamped `step`, by (stamp, row): one sort, once per run.
      std::vector<std::pair<int64_t, int64_t>> order;
      for (int64_t r = 0; r < used; ++r) {
        if (stamps[r] < step) order.emplace_back(stamps[r], r);
      }
      std::sort(order.begin(), order.end());
      if (static_cast<int64_t>(order.size()) > size) {
        return absl::InvalidArgumentError("the LRU log is smaller than the rows in use");
      }
      for (int64_t k = 0; k < static_cast<int64_t>(order.size()); ++k) {
        row_at(k) = order[k].second;
        step_at(k) = order[k].first;
      }
      *head = 0;
      *tail = static_cast<int64_t>(order.size());
    }
    victims->clear();
    victims->reserve(std::max<int64_t>(num_evict, 0));
    int64_t position = *head;
    // The ring index moves with the position, wrapping: no division per entry.
    for (int64_t at = position % size; position < *tail && static_cast<int64_t>(victims->size()) < num_evict;
         ++position, at = at + 1 == size ? 0 : at + 1) {
      const int64_t row = rows[at];
      if (row < 0 || row >= capacity) {
        return absl::InvalidArgumentError(absl::StrCat("the LRU log holds row ", row, " of ", capacity));
      }
      if (stamps[row] == steps[at]) victims->push_back(row);
    }
    if (static_cast<int64_t>(victims->size()) != std::max<int64_t>(num_evict, 0)) {
      return absl::InvalidArgumentError("DynamicEmbedding: the LRU log holds fewer live rows than needed");
    }
    *head = position;
    return absl::OkStatus();
  }

  // Logs the distinct `added` rows (stamped `step`, each < capacity) in
  // ascending order, once the log is kept (tail > 0).
  absl::Status Append(const std::vector<int64_t>& added, int64_t step) {
    if (*tail <= 0) return absl::OkStatus();  // no log kept yet
    const int64_t n = static_cast<int64_t>(added.size());
    // Ascending through the ids' radix sort (group_ids.h), where std::sort of a step's ~30k rows takes ~1 ms.
    const IdGroups sorted(added.data(), n, SerialFor{});
    int64_t start = *tail;
    if (*tail - *head + n > size) {
      // Compact: the live entries, in order, to positions 0, 1, ...
      // (Through a copy: position k's ring slot may still hold an unread entry of the old ring.)
      std::vector<std::pair<int64_t, int64_t>> live;
      for (int64_t p = *head; p < *tail; ++p) {
        if (Live(p)) live.emplace_back(row_at(p), step_at(p));
      }
      for (int64_t k = 0; k < static_cast<int64_t>(live.size()); ++k) {
        row_at(k) = live[k].first;
        step_at(k) = live[k].second;
      }
      *head = 0;
      start = static_cast<int64_t>(live.size());
    }
    if (start - *head + n > size) return absl::InvalidArgumentError("the LRU log cannot hold this step's rows");
    for (int64_t k = 0, at = start % size; k < n; ++k, at = at + 1 == size ? 0 : at + 1) {
      rows[at] = added[sorted.Position(k)];
      steps[at] = step;
    }
    *tail = start + n;
    return absl::OkStatus();
  }
};

}  // namespace embedopt

#endif  // EMBEDOPT_KERNELS_LRU_LOG_H_
