"""`TableWiseEmbedding`: a whole table on one worker (its owner), looked up by the others over the exchange.

A table_wise placement (components/trainer/planner.py): worker `owner` of
N holds every row and its optimizer slots, at local row = id; the other
workers hold a zero-row variable. Every lookup sends the batch's distinct
ids to the owner and gets their rows back through the same exchange as a
row-sharded table (`optimizers/all_to_all.py`, or the all-gather fallback),
and the gradient flows back to the owner only. So the planner can pack
tables whole onto workers instead of splitting each over all of them; the
owner serves every worker's lookups of the table, so with the padded
all-to-all each worker moves about (N - 1) x its distinct ids of rows per
step for it, against about (N - 1) / N of them when row-sharded
(docs/sharding.md).
"""

from __future__ import annotations

import keras

from optimizers.sharded import ShardedEmbedding, ShardSpec


@keras.saving.register_keras_serializable(package="embedopt")
class TableWiseEmbedding(ShardedEmbedding):
    """An embedding table held whole by worker `owner` of a multi-worker job; see the module docstring.

    Args:
        input_dim, output_dim, embeddings_initializer, validate_ids, combiner,
            exchange: as `ShardedEmbedding`'s.
        owner: the worker (replica id) that holds the table, 0 <= owner < N.
            With N = 1 the one worker holds it, whatever `owner` says.

    Example:
        >>> with strategy.scope():
        ...     table = optimizers.TableWiseEmbedding(100_000, 32, owner=1)
        ...     table.build()   # worker 1 holds 100,000 rows, the others 0
    """

    def __init__(self, input_dim, output_dim, owner=0, **kwargs):
        if isinstance(owner, bool) or not isinstance(owner, int) or owner < 0:
            raise ValueError(f"TableWiseEmbedding: `owner` must be an integer >= 0, got {owner!r}")
        super().__init__(input_dim, output_dim, **kwargs)
        self.owner = owner

    def _make_spec(self, num_shards: int, shard_index: int) -> ShardSpec:
        if num_shards == 1:
            return ShardSpec(1, 0, self.input_dim, owner=0)
        if self.owner >= num_shards:
            raise ValueError(f"TableWiseEmbedding {self.name!r}: owner {self.owner} is not one of the "
                             f"{num_shards} workers (0..{num_shards - 1})")
        return ShardSpec(num_shards, shard_index, self.input_dim, owner=self.owner)

    def get_config(self):
        config = super().get_config()
        config.update(owner=self.owner)
        return config
