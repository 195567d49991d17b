"""The DLRM-style model: embedding tables, bottom MLP, interaction, top MLP.

  dense [B, 13]     -> bottom MLP -> x0 [B, d]
  cat_i [B]         -> SparseEmbedding -> e_i [B, d]
  cat_i [B, (n_b)]  -> SparseEmbedding, pooled -> e_i [B, d]   (multi-hot: a bag of ids per example)
  dot:    z = upper triangle (i < j) of <v_i, v_j> over v = (x0, e_0..e_25), concat [x0, z]
  concat: z = [x0, e_0, ..., e_25]
  dcnv2:  z = CrossNetwork([x0, e_0, ..., e_25]) (DCN-v2 cross layers, components/trainer/dcn.py)
  z -> top MLP -> Dense(1) -> logit [B] (float32 also under mixed precision)
  wide (default on): logit += sum_i w_i, w_i a first-order weight per feature value

The wide term is the linear ("LR") part of wide & deep / DeepFM: a click
log's signal is mostly a sum of per-value effects, which dot products and
ReLU MLPs can only approximate, while a per-value weight represents it
exactly and learns it from few examples. Each table row carries it as one
extra column (row = [e_i, w_i], width d + 1), so it costs no extra lookup,
variable or optimizer call.

Tables are `optimizers.SparseEmbedding`, so their gradients are
`tf.IndexedSlices` and a step touches only the looked-up rows. With the
"shared" layout all features share one table of sum(vocab sizes) rows and
feature i reads rows offset_i + id. With `table_sharding="row"` they are
`optimizers.ShardedEmbedding`s, split by rows over the workers. Either way
every row starts from `RowUniform(seed)`'s value for its id, so both
placements start (and train) alike.

Multi-hot features (the metadata's `multi_hot_keys`) arrive as
`tf.RaggedTensor`s `[B, (n)]` of ids, possibly empty rows. A bag pools its
rows with `bag_combiner` (sum, mean or sqrtn; an empty bag gives zeros),
wide column included, so its `e_i` and `w_i` enter the model exactly where
a one-hot feature's do; a one-hot feature is a bag of one. The gradient
stays `tf.IndexedSlices`, each id of a bag one slice row (duplicates are
summed by the optimizer). With the shared layout and any bag, every
feature's ids (one-hot ones as bags of one) become one ragged batch of
F * B bags, offsets added to the values, for one pooled lookup. Without
bags the model is the one-hot model of before: same lookups, same
variables, same checkpoints.

With `table_kind="dynamic"` (per-feature layout only) each feature's table
is an `optimizers.DynamicEmbedding` of `table_capacities[i]` rows keyed by
the raw int64 fingerprint ids: a training call admits (and evicts) keys,
any other call only reads, and a key without a row reads zeros. A bag
looks its elements up as one flat batch of keys and pools them like a
fixed table's bag. The training step must call `reset_slots` on each of
`dynamic_tables()` between the gradient and the apply (loop.py does).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import optimizers
from components.preprocess.metadata import Metadata
from components.trainer import planner
from components.trainer.dcn import CrossNetwork
from components.trainer.table_plan import table_layer, table_placements


EMBEDDING_INIT_SCALE = 0.001


class DLRM(keras.Model):
    """Logits for click probability from the preprocess features dict.

    Args:
        vocab_sizes: rows per categorical feature, in `categorical_keys` order.
        categorical_keys: feature names, e.g. ("cat_0", ..., "cat_25").
        dense_key: name of the [B, num_dense] float feature.
        embedding_dim: width of every embedding (and of the bottom MLP output).
        table_layout: "per_feature" (one table each) or "shared" (one table, offsets).
        interaction: "dot", "concat" or "dcnv2".
        bottom_mlp, top_mlp: hidden layer widths.
        wide: add the first-order term (one more column per table row).
        seed: initialization seed (tables and MLPs).
        table_sharding: the placement of every table, "data_parallel" (alias
            "mirrored": every replica holds it) or "row_wise" (alias "row":
            `ShardedEmbedding`; build inside a MultiWorkerMirroredStrategy's
            scope with `build_variables`, call inside `strategy.run`);
            "table_wise" and "auto" need `placements`.
        placements: `(placement, owner)` per table (a `planner.Plan.layout()`),
            overriding `table_sharding`; table_wise tables are
            `TableWiseEmbedding`s held by their owner.
        exchange: how row- and table-wise tables exchange rows ("auto",
            "all_to_all", "all_gather"; see `ShardedEmbedding`).
        table_init: initializer of the tables (mirrored only; default
            `RowUniform` per table, which row sharding requires).
        multi_hot_keys: the keys of `categorical_keys` whose ids come as bags
            (`tf.RaggedTensor` `[B, (n)]`, or a `[B, n]` matrix).
        bag_combiner: "sum", "mean" or "sqrtn": how a bag pools its rows.
        cross_layers, cross_rank: the DCN-v2 cross network's depth and the
            rank of its W = U V^T (0: full rank); "dcnv2" only.
        table_kind: "fixed" (the tables above) or "dynamic" (a
            `DynamicEmbedding` per feature; `vocab_sizes` is then ignored).
        table_capacities: rows of each dynamic table, in `categorical_keys` order.
        dynamic_policy: `DynamicEmbedding` keyword arguments of every dynamic
            table (`admit_after`, `eviction`, `default`); None: the layer's defaults.
    """

    def __init__(self, vocab_sizes, categorical_keys, dense_key, embedding_dim=16, table_layout="per_feature",
                 interaction="dot", bottom_mlp=(64, 32), top_mlp=(64, 32), wide=True, seed=0,
                 table_sharding="mirrored", table_init=None, multi_hot_keys=(), bag_combiner="sum", cross_layers=3,
                 cross_rank=0, table_kind="fixed", table_capacities=None, placements=None, exchange="auto",
                 dynamic_policy=None, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        self.wide = bool(wide)
        width = self.embedding_dim + (1 if self.wide else 0)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.categorical_keys = tuple(categorical_keys)
        self.dense_key = dense_key
        self.table_layout = table_layout
        self.interaction = interaction
        self.table_sharding = table_sharding
        self.multi_hot_keys = tuple(k for k in self.categorical_keys if k in set(multi_hot_keys))
        unknown = sorted(set(multi_hot_keys) - set(self.categorical_keys))
        if unknown:
            raise ValueError(f"multi_hot_keys {unknown} are not categorical keys {list(self.categorical_keys)}")
        if bag_combiner not in optimizers.embedding.COMBINERS:
            raise ValueError(f"bag_combiner must be one of {optimizers.embedding.COMBINERS}, got {bag_combiner!r}")
        self.bag_combiner = bag_combiner
        count = len(self.vocab_sizes) if table_layout == "per_feature" else 1
        self.placements = table_placements(table_sharding, placements, count)
        # Any table split over the workers: each worker then checkpoints its own part (components/trainer/sharding.py).
        self.sharded = any(p != planner.DATA_PARALLEL for p, _ in self.placements)

        def tables(i, *args, **kw):
            return table_layer(*self.placements[i], exchange)(*args, **kw)

        def init(i):
            return _row_init(seed, i) if table_init is None else table_init

        if table_kind not in ("fixed", "dynamic"):
            raise ValueError(f"table_kind must be 'fixed' or 'dynamic', got {table_kind!r}")
        self.table_kind = table_kind

        # A combiner only where bags are: one-hot lookups stay plain gathers.
        if table_layout == "shared":
            self.offsets = tf.constant(np.cumsum([0] + self.vocab_sizes[:-1]), dtype=tf.int64)
            combiner = bag_combiner if self.multi_hot_keys else None
            self.tables = [tables(0, sum(self.vocab_sizes), width, embeddings_initializer=init(0),
                                  name="shared_table", combiner=combiner)]
        elif table_layout == "per_feature" and table_kind == "dynamic":
            kinds = {p for p, _ in self.placements}
            if kinds not in ({planner.DATA_PARALLEL}, {planner.ROW_WISE}):
                raise ValueError(f"dynamic tables are data_parallel or row_wise, got table_sharding {table_sharding!r}")
            capacities = list(table_capacities or ())
            if len(capacities) != len(self.categorical_keys):
                raise ValueError(f"table_capacities {capacities} must give one capacity per categorical key "
                                 f"({len(self.categorical_keys)})")
            # row_wise: split by key hash over the workers (optimizers/dynamic_sharded.py).
            dynamic = (optimizers.ShardedDynamicEmbedding if kinds == {planner.ROW_WISE} else
                       optimizers.DynamicEmbedding)
            self.tables = [
                dynamic(width, capacity, init_scale=EMBEDDING_INIT_SCALE,
                                            seed=(seed * 1000 + i) % 2**63, name=f"table_{key}",
                                            **(dynamic_policy or {}))
                for i, (key, capacity) in enumerate(zip(self.categorical_keys, capacities))
            ]
        elif table_layout == "per_feature":
            self.tables = [
                tables(i, size, width, embeddings_initializer=init(i), name=f"table_{key}",
                       combiner=bag_combiner if key in self.multi_hot_keys else None)
                for i, (key, size) in enumerate(zip(self.categorical_keys, self.vocab_sizes))
            ]
        else:
            raise ValueError(f"table_layout must be 'per_feature' or 'shared', got {table_layout!r}")
        if table_kind == "dynamic" and table_layout != "per_feature":
            raise ValueError(f"dynamic tables need table_layout 'per_feature', got {table_layout!r}")
        if interaction not in ("dot", "concat", "dcnv2"):
            raise ValueError(f"interaction must be 'dot', 'concat' or 'dcnv2', got {interaction!r}")
        dense_init = keras.initializers.GlorotUniform(seed=seed)
        self.bottom = [keras.layers.Dense(u, activation="relu", kernel_initializer=dense_init) for u in bottom_mlp]
        self.bottom.append(keras.layers.Dense(embedding_dim, activation="relu", kernel_initializer=dense_init))
        if interaction == "dcnv2":
            self.cross = CrossNetwork(cross_layers, cross_rank, seed=seed, name="cross")
        self.top = [keras.layers.Dense(u, activation="relu", kernel_initializer=dense_init) for u in top_mlp]
        self.head = keras.layers.Dense(1, dtype="float32", kernel_initializer=dense_init)
        n = len(self.categorical_keys) + 1
        rows, cols = np.triu_indices(n, k=1)
        self.pair_index = tf.constant(rows * n + cols, dtype=tf.int32)

    def build_variables(self, num_dense: int) -> None:
        """Creates every variable without calling the model (a sharded table's call runs collectives,
        which need `strategy.run`; building happens in `strategy.scope()`)."""
        for table in self.tables:
            table.build()
        width = num_dense
        for layer in self.bottom:
            layer.build((None, width))
            width = layer.units
        n = len(self.categorical_keys) + 1
        width = width + len(self.pair_index.numpy()) if self.interaction == "dot" else n * self.embedding_dim
        if self.interaction == "dcnv2":
            self.cross.build((None, width))
        for layer in self.top:
            layer.build((None, width))
            width = layer.units
        self.head.build((None, width))
        self.built = True

    def build(self, input_shape):
        """Keras calls this on the first call, with the features' shapes (a dict)."""
        self.build_variables(int(input_shape[self.dense_key][-1]))

    def dynamic_tables(self) -> list:
        """The `DynamicEmbedding` tables (none with fixed tables)."""
        return list(self.tables) if self.table_kind == "dynamic" else []

    def embedding_variables(self) -> list:
        """The table variables: these go to the sparse (embedding) optimizer."""
        return [table.embeddings for table in self.tables]

    def dense_variables(self) -> list:
        """Every other trainable variable: these go to the dense optimizer."""
        tables = {id(v) for v in self.embedding_variables()}
        return [v for v in self.trainable_variables if id(v) not in tables]

    def _checked_ids(self, ids: list) -> list:
        """Each feature's ids (a tensor or a ragged tensor) against its own size: in the shared table an id past
        it would read the next feature's rows, which the table's own range check cannot see."""
        checked = []
        for key, size, column in zip(self.categorical_keys, self.vocab_sizes, ids):
            values = column.values if isinstance(column, tf.RaggedTensor) else column
            check = tf.debugging.Assert(
                tf.logical_and(tf.reduce_all(values >= 0), tf.reduce_all(values < size)),
                [f"feature {key}: ids must be in [0, {size}) (its vocabulary size in the metadata); got min",
                 tf.reduce_min(values), "max", tf.reduce_max(values)])
            with tf.control_dependencies([check]):
                values = tf.identity(values)
            checked.append(column.with_values(values) if isinstance(column, tf.RaggedTensor) else values)
        return checked

    def _ids(self, features) -> list:
        """Each feature's int64 ids: `[B]` for one-hot keys, a `tf.RaggedTensor` `[B, (n)]` for bags."""
        ids = []
        for key in self.categorical_keys:
            column = features[key]
            if key in self.multi_hot_keys:
                if not isinstance(column, tf.RaggedTensor):
                    if column.shape.rank != 2:
                        raise ValueError(f"feature {key} is multi-hot: its ids must be a tf.RaggedTensor [B, (n)] "
                                         f"or a [B, n] matrix, got shape {column.shape}")
                    column = tf.RaggedTensor.from_tensor(column)
                column = tf.cast(column, tf.int64).with_row_splits_dtype(tf.int64)
            else:
                column = tf.cast(column, tf.int64)
            ids.append(column)
        return ids

    def _dynamic_lookup(self, table, keys, training):
        """[B] keys -> [B, d]; a bag [B, (n)] -> its elements looked up as one flat batch, pooled -> [B, d]."""
        if not isinstance(keys, tf.RaggedTensor):
            return table(keys, training=training)
        rows = table(keys.values, training=training)
        segments, count = keys.value_rowids(), keys.nrows()
        pooled = tf.math.unsorted_segment_sum(rows, segments, count)
        if self.bag_combiner != "sum":
            lengths = tf.cast(keys.row_lengths(), rows.dtype)[:, None]
            norm = lengths if self.bag_combiner == "mean" else tf.sqrt(lengths)
            pooled = tf.math.divide_no_nan(pooled, norm)
        return pooled

    def _embed(self, features, training=False):
        ids = self._ids(features)
        if self.table_kind == "dynamic":
            return tf.stack([self._dynamic_lookup(t, i, training) for t, i in zip(self.tables, ids)], axis=1)
        if self.table_layout == "per_feature":
            return tf.stack([table(i) for table, i in zip(self.tables, ids)], axis=1)
        ids = self._checked_ids(ids)
        if not self.multi_hot_keys:
            stacked = tf.stack(ids, axis=1) + self.offsets  # [B, F]
            return self.tables[0](stacked)  # [B, F, d]
        # Feature-major bags, [F * B, (n)]: one pooled lookup for all features; a one-hot id is a bag of one.
        batch = tf.shape(ids[0], out_type=tf.int64)[0]
        bags = []
        for f, column in enumerate(ids):
            if not isinstance(column, tf.RaggedTensor):
                column = tf.RaggedTensor.from_row_splits(column, tf.range(batch + 1, dtype=tf.int64), validate=False)
            bags.append(column.with_values(column.values + self.offsets[f]))
        pooled = self.tables[0](tf.concat(bags, axis=0))  # [F * B, d]
        width = self.tables[0].output_dim
        return tf.transpose(tf.reshape(pooled, [len(ids), batch, width]), [1, 0, 2])  # [B, F, d]

    def call(self, features, training=False):
        dense = features[self.dense_key]
        finite = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(dense)),
                                     [f"feature {self.dense_key}: NaN or Inf in the input"])
        with tf.control_dependencies([finite]):
            x = tf.cast(tf.identity(dense), self.compute_dtype)
        for layer in self.bottom:
            x = layer(x)
        rows = tf.cast(self._embed(features, training), x.dtype)  # [B, F, width]
        embedded = rows[:, :, : self.embedding_dim]
        vectors = tf.concat([x[:, None, :], embedded], axis=1)  # [B, F+1, d]
        if self.interaction == "dot":
            products = tf.matmul(vectors, vectors, transpose_b=True)  # [B, F+1, F+1]
            flat = tf.reshape(products, [tf.shape(products)[0], -1])
            z = tf.concat([x, tf.gather(flat, self.pair_index, axis=1)], axis=1)
        else:
            z = tf.reshape(vectors, [tf.shape(vectors)[0], vectors.shape[1] * vectors.shape[2]])
            if self.interaction == "dcnv2":
                z = self.cross(z)
        for layer in self.top:
            z = layer(z)
        logit = tf.squeeze(self.head(z), axis=1)
        if self.wide:
            logit += tf.reduce_sum(tf.cast(rows[:, :, self.embedding_dim], tf.float32), axis=1)
        return logit


def _table_kind_args(metadata: Metadata, config) -> dict:
    """DLRM's table_kind arguments: none for fixed tables (the call of before), capacities for dynamic ones."""
    if getattr(config, "table_kind", "fixed") == "fixed":
        return {}
    return dict(table_kind="dynamic", table_capacities=config.capacities(metadata.categorical_keys),
                dynamic_policy=config.dynamic_policy())


def _row_init(seed: int, table: int) -> optimizers.RowUniform:
    """Each table's rows from their own stream (seed, table), a function of the row id only."""
    return optimizers.RowUniform(-EMBEDDING_INIT_SCALE, EMBEDDING_INIT_SCALE, seed=(seed * 1000 + table) % 2**63)


def build_model(metadata: Metadata, config, table_sharding: str | None = None, table_init=None,
                placements=None) -> DLRM:
    """A built DLRM (variables created) for `metadata`'s features and `config`'s sizes.

    `table_sharding` overrides `config.table_sharding`, and `table_init` the
    tables' initializer: the export builds a whole-table twin of a
    row-sharded model with zero tables, then fills them from the shards.
    `placements` (a `planner.Plan.layout()`) places each table.
    """
    model = DLRM(
        vocab_sizes=[metadata.vocab_sizes[key] for key in metadata.categorical_keys],
        categorical_keys=metadata.categorical_keys,
        dense_key=metadata.dense_key,
        embedding_dim=config.embedding_dim,
        table_layout=config.table_layout,
        interaction=config.interaction,
        bottom_mlp=config.bottom_mlp,
        top_mlp=config.top_mlp,
        wide=config.wide,
        seed=config.seed,
        table_sharding=table_sharding or config.table_sharding,
        table_init=table_init,
        placements=placements,
        exchange=getattr(config, "exchange", "auto"),
        multi_hot_keys=getattr(metadata, "multi_hot_keys", None) or (),
        bag_combiner=config.bag_combiner,
        cross_layers=config.cross_layers,
        cross_rank=config.cross_rank,
        **_table_kind_args(metadata, config),
    )
    if model.sharded:
        model.build_variables(metadata.num_dense)
        return model
    example = {metadata.dense_key: tf.zeros([1, metadata.num_dense])}
    example.update({key: tf.zeros([1], tf.int64) for key in metadata.categorical_keys})
    # A bag of one id 0 per multi-hot feature.
    example.update({key: tf.RaggedTensor.from_row_lengths(tf.zeros([1], tf.int64), tf.ones([1], tf.int64))
                    for key in model.multi_hot_keys})
    model(example)
    return model
