// Shared helpers of the embedopt kernels: compute types, the intra-op
// thread pool, id validation and row conversion.
#ifndef EMBEDOPT_KERNELS_COMMON_H_
#define EMBEDOPT_KERNELS_COMMON_H_

#include <algorithm>
#include <cstdint>
#include <limits>
#include <cstdlib>
#include <string>
#include <memory>
#include <mutex>
#include <type_traits>
#include <unordered_set>
#include <vector>

#include <sys/mman.h>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace embedopt {

using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

// Half types are summed and updated in float and rounded once on store:
// summing many bfloat16 gradients in bfloat16 would lose most of them.
template <typename T>
struct ComputeTypeOf {
  using type = T;
};
template <>
struct ComputeTypeOf<Eigen::half> {
  using type = float;
};
template <>
struct ComputeTypeOf<Eigen::bfloat16> {
  using type = float;
};
template <typename T>
using ComputeType = typename ComputeTypeOf<T>::type;

// Positions are kept as uint32 to halve the sort's memory traffic.
constexpr int64_t kMaxIds = std::numeric_limits<int32_t>::max();

// Runs fn(begin, end) over [0, total) on TensorFlow's intra-op pool (the
// caller's thread takes part). `cost_per_unit` is in cycles, as Eigen expects.
template <typename F>
void ParallelFor(OpKernelContext* ctx, int64_t total, int64_t cost_per_unit, const F& fn) {
  if (total <= 0) return;
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(total, tsl::thread::ThreadPool::SchedulingParams::Adaptive(cost_per_unit),
                    [&fn](int64_t begin, int64_t end) { fn(begin, end); });
}

// Runs fn(unit) for unit in [0, units), each unit a task of its own on the
// intra-op pool (the caller's thread takes part): for a few unlike pieces of
// work that should run side by side.
template <typename F>
void RunUnits(OpKernelContext* ctx, int64_t units, const F& fn) {
  ctx->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(
      units, tsl::thread::ThreadPool::SchedulingParams::Fixed(1), [&fn](int64_t begin, int64_t end) {
        for (int64_t unit = begin; unit < end; ++unit) fn(unit);
      });
}

// ParallelFor bound to a kernel's context, for helpers that take a
// `parallel_for(total, cost_per_unit, fn)`.
struct IntraOpPool {
  OpKernelContext* ctx;
  template <typename F>
  void operator()(int64_t total, int64_t cost_per_unit, const F& fn) const {
    ParallelFor(ctx, total, cost_per_unit, fn);
  }
};

// The number of elements per first-axis row of a tensor of rank >= 1.
inline int64_t RowWidth(const Tensor& t) {
  int64_t width = 1;
  for (int i = 1; i < t.dims(); ++i) width *= t.dim_size(i);
  return width;
}

// The shape [rows] + `like`'s shape without its first axis.
inline TensorShape WithRows(int64_t rows, const TensorShape& like) {
  TensorShape shape({rows});
  for (int i = 1; i < like.dims(); ++i) shape.AddDim(like.dim_size(i));
  return shape;
}

// The error for id `ids[pos]` outside [0, rows): names the argument, the id,
// its position and the valid range.
inline absl::Status OutOfRange(const char* arg, int64_t pos, int64_t id, int64_t rows,
                               const char* rows_of) {
  return absl::InvalidArgumentError(absl::StrCat(arg, "[", pos, "] = ", id, " is not in [0, ", rows,
                                                 "), the rows of ", rows_of));
}

// The first position whose id is outside [0, rows), or -1. A sequential scan
// so the reported position is the first one, whatever the thread count.
template <typename Tindex>
int64_t FirstOutOfRange(const Tindex* ids, int64_t n, int64_t rows) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || static_cast<int64_t>(ids[i]) >= rows) return i;
  }
  return -1;
}

// Checks that `ids` is a vector of at most kMaxIds elements.
inline absl::Status CheckIdVector(const char* arg, const Tensor& ids) {
  if (!tensorflow::TensorShapeUtils::IsVector(ids.shape())) {
    return absl::InvalidArgumentError(
        absl::StrCat(arg, " must be a vector, got shape ", ids.shape().DebugString()));
  }
  if (ids.NumElements() > kMaxIds) {
    return absl::InvalidArgumentError(
        absl::StrCat(arg, " has ", ids.NumElements(), " elements; at most ", kMaxIds, " are supported"));
  }
  return absl::OkStatus();
}

// Checks that `values` has shape [n] + `row_shape` (the shape of one row).
inline absl::Status CheckRows(const char* arg, const Tensor& values, int64_t n, const char* n_of,
                              const TensorShape& like, const char* like_name) {
  const TensorShape want = WithRows(n, like);
  if (values.shape() != want) {
    return absl::InvalidArgumentError(absl::StrCat(arg, " must have shape ", want.DebugString(), " (", n_of,
                                                   ", then the row shape of ", like_name, "), got ",
                                                   values.shape().DebugString()));
  }
  return absl::OkStatus();
}

// Checks that input `i` (argument `arg`) is an initialized variable holding
// T, before TensorFlow's variable helpers read it as T (they CHECK-fail on a
// dtype mismatch).
template <typename T>
absl::Status CheckVariable(OpKernelContext* ctx, int i, const char* arg) {
  tensorflow::core::RefCountPtr<tensorflow::Var> v;
  TF_RETURN_IF_ERROR(tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, i), &v));
  tsl::tf_shared_lock lock(*v->mu());
  if (!v->is_initialized) {
    return absl::FailedPreconditionError(
        absl::StrCat(arg, ": variable ", ctx->op_kernel().requested_input(i), " is not initialized"));
  }
  const tensorflow::DataType want = tensorflow::DataTypeToEnum<T>::v();
  if (v->tensor()->dtype() != want) {
    return absl::InvalidArgumentError(absl::StrCat(arg, ": variable ", ctx->op_kernel().requested_input(i),
                                                   " holds ", tensorflow::DataTypeString(v->tensor()->dtype()),
                                                   " but the op was given ", tensorflow::DataTypeString(want)));
  }
  return absl::OkStatus();
}

// A scratch array of n Ts that borrows this thread's cached array `slot` when
// it is free. Fresh arrays of a few hundred KB are mmap'ed by malloc, and
// their page faults cost as much as the sort that fills them; the cache keeps
// at most kMaxCachedBytes per slot, type and thread.
template <typename T>
class ScratchBuffer {
 public:
  static constexpr size_t kMaxCachedBytes = size_t{16} << 20;
  static constexpr int kSlots = 2;

  ScratchBuffer(int64_t n, int slot) {
    Cache& cache = ThreadCaches()[slot];
    if (!cache.in_use && static_cast<size_t>(n) * sizeof(T) <= kMaxCachedBytes) {
      if (cache.data.size() < static_cast<size_t>(n)) cache.data.resize(n);
      cache.in_use = true;
      cache_ = &cache;
      data_ = cache.data.data();
    } else {
      owned_.reset(new T[n]);
      data_ = owned_.get();
    }
  }
  ~ScratchBuffer() {
    if (cache_ != nullptr) cache_->in_use = false;
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;

  T* get() const { return data_; }
  T& operator[](int64_t i) const { return data_[i]; }

 private:
  struct Cache {
    std::vector<T> data;
    bool in_use = false;
  };
  static Cache* ThreadCaches() {
    thread_local Cache caches[kSlots];
    return caches;
  }

  Cache* cache_ = nullptr;
  std::unique_ptr<T[]> owned_;
  T* data_ = nullptr;
};

// Asks Linux to back a large table with 2 MB pages, once per buffer. Rows
// are read and written at random all over a table of hundreds of MB; with
// 4 KB pages nearly every row costs a TLB miss and a page walk besides its
// own cache misses, and the optimizer's slots triple that. MADV_HUGEPAGE
// makes later faults use huge pages where transparent huge pages are set to
// "madvise" (the common default); MADV_COLLAPSE (Linux >= 6.1) converts the
// pages already there. Both leave the contents as they are; a kernel that
// refuses either (older, or THP "never") changes nothing but speed.
// EMBEDOPT_HUGE_PAGES=off turns it off.
inline void AdviseHugePages(const void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr size_t kHuge = size_t{2} << 20;
  constexpr size_t kMinBytes = size_t{16} << 20;  // smaller tables fit the TLB's reach already
  if (bytes < kMinBytes) return;
  static const bool enabled = [] {
    const char* setting = std::getenv("EMBEDOPT_HUGE_PAGES");
    if (setting == nullptr) return true;
    const std::string value(setting);
    return !(value == "off" || value == "0" || value == "false" || value == "no");
  }();
  if (!enabled) return;
  static std::mutex mu;
  static std::unordered_set<const void*>* seen = new std::unordered_set<const void*>();
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!seen->insert(data).second) return;
  }
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end <= begin) return;
  void* start = reinterpret_cast<void*>(begin);
  madvise(start, end - begin, MADV_HUGEPAGE);
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
  madvise(start, end - begin, MADV_COLLAPSE);
#endif
}

// Asks the CPU to start loading the row at `row` (up to 4 cache lines) that a
// loop will read a few iterations later: rows of a large table are scattered
// at random, so the hardware prefetcher cannot guess them, and waiting for
// each miss in turn is what made gathers slow (3x, measured on 1M x 32 rows).
template <typename T>
inline void PrefetchRow(const T* row, int64_t width, bool for_write = false) {
  const char* bytes = reinterpret_cast<const char*>(row);
  const int64_t size = std::min<int64_t>(width * static_cast<int64_t>(sizeof(T)), 256);
  for (int64_t offset = 0; offset < size; offset += 64) {
    if (for_write) {
      __builtin_prefetch(bytes + offset, 1);
    } else {
      __builtin_prefetch(bytes + offset, 0);
    }
  }
}

// How many rows ahead the gather loops prefetch: enough to cover a DRAM miss.
constexpr int64_t kPrefetchAhead = 16;
// How many items ahead the dynamic table's loops over a step's distinct keys
// prefetch: their arrays (key index, stamps, rows) come back cold from memory
// in a training step, and each item is little work.
constexpr int64_t kFarAhead = 32;

// Calls fn(std::integral_constant<int64_t, W>) for the common row widths and
// fn(std::integral_constant<int64_t, 0>) for any other (the caller then uses
// its runtime width). With the width known at compile time a row loop
// unrolls and its accumulator stays in registers, instead of being loaded
// and stored again for every row added to it.
template <typename F>
inline void WithRowWidth(int64_t width, const F& fn) {
  switch (width) {
    case 8: return fn(std::integral_constant<int64_t, 8>{});
    case 16: return fn(std::integral_constant<int64_t, 16>{});
    case 32: return fn(std::integral_constant<int64_t, 32>{});
    case 64: return fn(std::integral_constant<int64_t, 64>{});
    case 128: return fn(std::integral_constant<int64_t, 128>{});
    default: return fn(std::integral_constant<int64_t, 0>{});
  }
}

// Row conversion between the stored type T and the compute type C. For
// T == C the kernels use the stored rows in place and never call these.
template <typename T, typename C>
inline void LoadRow(const T* src, int64_t width, C* dst) {
  for (int64_t i = 0; i < width; ++i) dst[i] = static_cast<C>(src[i]);
}

template <typename T, typename C>
inline void StoreRow(const C* src, int64_t width, T* dst) {
  for (int64_t i = 0; i < width; ++i) dst[i] = static_cast<T>(src[i]);
}

}  // namespace embedopt

#endif  // EMBEDOPT_KERNELS_COMMON_H_
