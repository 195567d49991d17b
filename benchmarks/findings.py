"""Reasons (found by profiling on the reference machine) attached to goals that are not met.

Each entry maps a goal-name prefix to the cause found and the fix that would
meet it; `annotate` copies it into the goal's "note" only when the goal is
missed in this run, so a met goal never carries a stale explanation. The
profiles behind them: the stage timings recorded by `apply_bandwidth`, the
`unique_rows_per_batch` recorded with every step-time measurement, and
gather/scatter/unique timings of the touched rows at 100k, 1M and 10M rows
(2 cores, shared machine; minimum of 30 calls).
"""

from __future__ import annotations

import re

SCALING = (
    "Nothing table-sized runs in our step (a test checks the traced graph); with the fused kernels the step is a "
    "few ms of random row access, and that gets dearer with the table: (1) Zipf ids over more rows touch more "
    "distinct rows per batch (unique_rows_per_batch: ~19k at 100k rows, ~32k at 10M, 1.7x the rows to gather, "
    "update and write); (2) a 100k-row table and its slots (13-38 MB) stay in this EPYC's caches, while from 1M "
    "rows on every touched row of the table and of each slot is a cache and TLB miss. The kernels sort the rows "
    "(ids ascending), prefetch them a few rows ahead and put tables of 16 MB or more on 2 MB pages (one TLB entry "
    "per 2 MB instead of 4 kB). The spread between repeats (iqr_s, 0.2-3 ms on 5-10 ms steps) is as large as "
    "the differences. What is left: this benchmark's lookup + tf.reduce_sum, which materializes "
    "[batch, 26, dim] and its gradient; SparseEmbedding(combiner='sum') pools in the kernel (see fused_step)."
)

KERAS_SGD = (
    "keras.optimizers.SGD already applies a tf.IndexedSlices gradient sparsely (scatter_sub on the touched "
    "rows), so the Keras pair's only table-sized cost is keras.layers.Embedding reading the whole table into "
    "a tensor each step, and this machine streams that quickly (4M x 32 float32 = 512 MB in about 60 ms). The "
    "built-ins with slots (Adam, Adagrad, FTRL) densify their update too and lose by 18-60x. Our SGD step here is "
    "the lookup + tf.reduce_sum of this benchmark; pooled in the kernel (fused_step) it is about half as long."
)
KERAS_NEAR = (
    "Keras's SGD(momentum=0.9) and Adagrad densify one slot update (one table-sized pass), the cheapest of the "
    "slotted Keras pairs, and this machine streams table-sized passes fast (see the SGD goal's note); the ratio "
    "moves with the spread of both timings (see iqr_s). Our side is bound by random row access (see the scaling "
    "goal)."
)
FUSED_STEP = (
    "Where the fused step's time goes (1M x 32, batch 4096 x 26, 106k ids, 26.8k distinct; TF profiler, CPU time "
    "over 2 threads, LazyAdam step of 3.2 ms): forward pooled lookup with the radix sort beside it 0.84 ms, "
    "backward 0.51 ms, apply 0.97 ms (var, m and v of each row: three random rows, memory-bound; SGD's is a "
    "third of it), finite check 0.08 ms, and ~0.45 ms from Python to the executor and back. It met the goal in "
    "the committed run (0.86x) and in one run alone (0.88x); with other jobs on the 2 cores it measured 1.05x. "
    "What would add margin: applying in the backward pass when no clipping or finite check needs the summed "
    "gradient first, and slots stored beside their row (one 384-byte row for var, m and v)."
)

# (regular expression on the goal name, reason); the first match wins.
REASONS: list[tuple[str, str]] = [
    (r"^step_time sgd: keras", KERAS_SGD),
    (r"^step_time \w+: keras", KERAS_NEAR),
    (r"^step_time \w+: ours", SCALING),
    (r"^multi_worker", (
        "The gradient exchange is not table-sized: the embedding gradient is a tf.IndexedSlices and the "
        "all-reduce gathers the batch's slices (2048 x 26 rows per worker). Before optimizers commit b9a3c95 a "
        "tf.gather on the MirroredVariable read the whole table each step (1.84x here); what remains is the "
        "single-process growth of step_time (more distinct rows, table out of cache at 1M rows) and two workers "
        "sharing 2 cores. Fix: as for step_time (sorted row access in dedup_indexed_slices, huge pages).")),
    (r"^preprocess_scaling: peak RSS \d+ rows", (
        "Vocabulary mode holds what O(vocabulary) allows, and on Zipf-distributed synthetic data the vocabulary "
        "grows with the rows: 1.9M distinct values are counted at 4M rows and 988k are kept (351k at 1M rows), "
        "2.8x. Hash mode, whose memory does not depend on the data, stays flat (1.00x). The peak comes at the end "
        "of the counting pass (sampled every 0.1 s): the count accumulators (arrow, ~20 bytes a distinct value) are "
        "encoded by the runner, decoded, merged with a hash aggregation and sorted for the selection, several "
        "copies at once; the encoding pass after it stays lower. Fix: count with a bounded-size sketch (e.g. a "
        "count-min sketch to drop values under --min-frequency before they are held), or merge the accumulators "
        "in place with a persistent hash table instead of concatenate-and-aggregate. Measured: "
        "ARROW_DEFAULT_MEMORY_POOL=system (pyarrow's default mimalloc keeps freed memory) lowers the 1-worker "
        "peaks to 0.43 and 0.57 GB, still 1.33x.")),
    (r"^preprocess_scaling: peak tree RSS", (
        "The 2-worker vocabulary runs are the largest: two workers and the runner each hold the counts and the "
        "vocabulary (see the RSS growth note). One worker or hash mode stays at 0.4-0.7 GB.")),
    (r"^preprocess_scaling: 2 workers / 1 worker", (
        "DirectRunner's multi_processing mode runs the runner and its gRPC data plane in the driver process, on "
        "the same 2 cores as the two workers, and its stages are barriers: the vocabulary pass, the combine and "
        "the encode pass run one after the other, and the final merge of the counts and the vocabulary "
        "selection run in one process. The per-row work itself splits evenly (one shard per input range). On a "
        "machine with more cores than workers, or a distributed runner, the driver's share stops competing.")),
    (r"^input_pipeline", (
        "Profile of the reader on the 8 default shards (50k rows, batch 1024, 2 cores, quiet machine): GZIP "
        "decompression through the interleave alone gives 241k examples/s, plus parse_example 225k, plus the "
        "100k-record shuffle buffer 189k, the whole make_dataset 144k; on a quiet machine the trainer itself "
        "runs 63k examples/s (16 ms/step), twice what it does under load, so the ratio falls from 3.0 (loaded) "
        "to 2.3. Since then the reader interleaves 8 shards (2.3 -> 3.2), and a seeded reader, as the trainer's "
        "is, interleaves deterministically so a resumed run reads on exactly (2.8-3.0 in two runs). Fix: shuffle a "
        "smaller record buffer (or whole parsed batches), or keep the categorical ids in one int64 feature of 26 "
        "values so parsing handles 3 features instead of 28.")),
    (r"^fused_step", FUSED_STEP),
    (r"^dynamic_tables: dynamic / fixed step", (
        "The fixed step is one fused lookup and its fused gradient. The dynamic step adds a native unique + "
        "lookup of the batch's keys (optimizers/kernels/cc/dynamic_table_op.cc: a serial dedup, 0.7-0.9 ms at "
        "106k keys, with the last step's index updates beside it, then probes of the distinct keys), the whole "
        "admission/eviction policy as one kernel in place (dynamic_policy_op.cc: LRU log or LFU buckets, sketch, "
        "new rows with the TF path's Philox bits) and in-place slot resets; its lookup and gradient reuse the "
        "unique op's grouping. Within 1.5x whether the keys fit or ~12k keys a step are admitted and evicted; "
        "what an evicting step still pays beyond the fixed one is the serial dedup and the scattered writes for "
        "each new row (row keys, stamps, values, slot resets).")),
    (r"^apply_bandwidth", (
        "With the fused kernel the apply reads each touched row of the variable and its slots once and writes it "
        "once, in parallel over rows, prefetching ahead (0.54-0.65 of memcpy for SGD, Momentum, Adagrad, LazyAdam "
        "and FTRL). Row-wise Adagrad moves the fewest bytes per row (the row plus one float of accumulator, a "
        "random 4-byte access that costs a whole cache line) and AdamW adds the decay to Adam's three rows, so "
        "for them the same per-row latency counts for fewer bytes. Fix: the accumulator beside its row (one "
        "cache line fewer per row). Tables of 16 MB or more are on 2 MB pages already (1.7x for a 4M-row apply with "
        "two slots in a C++ loop); the rest moves from run to run by as much as the misses (Momentum 0.43 in one "
        "run, 0.8 in another).")),
    (r"^dense_parity", (
        "Compare 'ours/keras apply': the optimizer apply alone isolates our code from the forward/backward pass, "
        "and the step ratio moves with the load of this shared 2-core machine (see iqr_s). Our dense apply does "
        "more than Keras's: a finite check over every gradient (optimizers/sparse.py:finite_flags, one reduction per "
        "variable), a tf.cond around each variable's update and one around the step counter "
        "(optimizers/base.py:_backend_update_step, _distributed_guarded_update, _account_for_step). Fix: one fused "
        "finite check (tf.math.is_finite over the concatenated gradients) and one tf.cond for the whole step "
        "instead of one per variable.")),
    (r"^input_pipeline", (
        "The reader was measured alone but the trainer runs on the same 2 cores, and DirectRunner writes the "
        "train split as ONE GZIP file (data-00000-of-00001), so make_dataset's interleave has a single file to "
        "read: decompression and record reading are one thread; parse_example per batch is the rest. Fix: have "
        "the preprocess write several shards (WriteToTFRecord num_shards, e.g. 8-16) so the interleave reads "
        "files in parallel, raise cycle_length, and parse with num_parallel_calls on more cores than 2; on a "
        "machine with more cores than the trainer uses, the reader's headroom grows accordingly.")),
]


def annotate(name: str, bench: dict) -> None:
    """Adds the reason of each missed goal after what the benchmark measured for it (its own note)."""
    for goal in bench.get("goals", []):
        if goal["met"]:
            continue
        for pattern, reason in REASONS:
            if re.search(pattern, goal["name"]):
                if reason not in goal["note"]:
                    goal["note"] = f"{goal['note']} {reason}".strip()
                break
