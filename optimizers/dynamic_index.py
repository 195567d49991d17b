"""`DynamicEmbedding`'s key -> row map: a TensorFlow `MutableHashTable` and, where the kernels run, a native index.

The truth is in variables: row r belongs to key `row_keys[r]` for every
`r < rows_in_use`, and every resident key has exactly one row. Both indexes
are caches of that map:

- `KeyToRow`, a `MutableHashTable`, serves the TF-ops path: the fallback
  when the kernels do not load, replicated training, and the exported
  SavedModel (TF ops only). It is the object that checkpoints and `.keras`
  files have always held, under the same name, so older checkpoints restore;
  it refreshes itself from `row_keys` before it is saved or exported.
- `NativeIndex` (the `EmbedoptKeyIndex*` kernels) serves the kernel path: one
  op finds a batch's distinct keys, counts and rows, another applies a step's
  evictions and admissions, in place of `tf.unique_with_counts` and the
  hash table's single-threaded lookup, remove and insert.

Keeping the two consistent without touching both on every step:
- the native index is stamped with the layer's `steps` by each step it
  serves; a stamp that differs from `steps` (a step taken by the TF path, a
  restore to another step) or a reset (any restore, `rebuild_index`) makes
  the next kernel rebuild it from `row_keys` first;
- each kernel-path training step empties the `MutableHashTable` (a no-op once
  empty), and the TF path refills it from `row_keys` when its size is not
  `rows_in_use`. A non-empty table of the right size is therefore current.
"""

from __future__ import annotations

import itertools

import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops  # EagerResourceDeleter: frees the index with its handle
from tensorflow.python.saved_model import save_context  # no public API tells "tracing for a SavedModel"

_NAMES = itertools.count()


class KeyToRow(tf.lookup.experimental.MutableHashTable):
    """The TF-ops key -> row index of a `DynamicEmbedding`; its content follows `row_keys[:rows_in_use]`.

    `lookup` and `export` give the current map whichever path trained last.
    """

    def __init__(self, row_keys, rows_in_use, name):
        self._row_keys = row_keys
        self._rows_in_use = rows_in_use
        self._restore_listeners = []
        self._made = False  # the base class exports the (empty) table while it makes it
        super().__init__(tf.int64, tf.int64, default_value=-1, name=name)
        self._made = True

    def truth(self):
        """`(keys, rows)`: the map held by the variables, in row order."""
        used = tf.convert_to_tensor(self._rows_in_use.value)
        return self._row_keys.value[:used], tf.range(used, dtype=tf.int64)

    def export(self, name=None):
        """The current map: the table's entries after `refresh` (checkpoints and SavedModels save this)."""
        if not self._made:
            return super().export(name)
        if save_context.in_save_context() or not (tf.executing_eagerly() or tf.inside_function()):
            # A SavedModel's graph (which cannot reach the variables): it only names the table; the saved content
            # comes from the eager checkpoint write, which refreshes.
            return super().export(name)
        with tf.control_dependencies([self.refresh()]):
            return super().export(name)

    def lookup(self, keys, dynamic_default_values=None, name=None):
        """The rows of `keys` (-1: none), after refilling the table if a kernel-path step emptied it."""
        with tf.control_dependencies([self.refresh()]):
            return super().lookup(keys, dynamic_default_values, name)

    def refresh(self):
        """Refills the table from the variables unless it holds `rows_in_use` keys already (TF ops only)."""
        stale = tf.not_equal(self.size(), tf.convert_to_tensor(self._rows_in_use.value))
        return tf.cond(stale, self.rebuild, lambda: tf.constant(False))

    def rebuild(self):
        """Empties the table and inserts the map held by the variables."""
        self.clear()
        keys, rows = self.truth()
        with tf.control_dependencies([self.insert(keys, rows)]):
            return tf.constant(True)

    def clear(self):
        """Removes every key (O(size); the kernel path calls it once per switch from the TF path)."""
        keys, _ = super().export()
        return self.remove(keys)

    def clear_if_filled(self):
        """Empties the table unless it is empty: the kernel path is about to change the map without it."""
        return tf.cond(self.size() > 0, lambda: tf.group(self.clear()), tf.no_op)

    def on_restore(self, listener):
        """Calls `listener()` after each eager restore of this table (a checkpoint read)."""
        self._restore_listeners.append(listener)

    def _restore_from_tensors(self, restored_tensors):
        restored = super()._restore_from_tensors(restored_tensors)
        if tf.executing_eagerly():  # a SavedModel traces this: its restore has no native index to reset
            for listener in self._restore_listeners:
                listener()
        return restored


class NativeIndex:
    """A handle to one layer's `EmbedoptKeyIndex` and the ops on it (kernel path only).

    Not tracked by checkpoints: it is rebuilt from the variables whenever it
    may be out of date (see the module docstring).
    """

    def __init__(self, table: KeyToRow, row_keys, rows_in_use, steps, name: str):
        from optimizers.kernels import ops

        self._ops = ops
        self._table = table
        self._state = (row_keys, rows_in_use, steps)
        with tf.init_scope():
            self.handle = ops.key_index_handle(shared_name=f"embedopt_key_index_{next(_NAMES)}_{name}")
            self._deleter = resource_variable_ops.EagerResourceDeleter(self.handle, self.handle.device)
            table.on_restore(self.reset)

    def unique(self, keys):
        """`(unique, position, counts, rows)` of the int64 vector `keys` (see `ops.key_index_unique`)."""
        row_keys, rows_in_use, steps = self._state
        return self._ops.key_index_unique(self.handle, keys, row_keys, tf.convert_to_tensor(rows_in_use.value),
                                          tf.convert_to_tensor(steps.value))

    def update(self, removed_keys, new_keys, new_rows, step):
        """Applies a training step's evictions and admissions; `step` is the layer's `steps` after it."""
        cleared = self._table.clear_if_filled()
        with tf.control_dependencies([cleared]):
            return self._ops.key_index_update(self.handle, removed_keys, new_keys, new_rows, step)

    def policy_step(self, layer, unique, counts, rows):
        """The whole training step of `layer`'s policy in one kernel (float32 tables); returns the rows after it."""
        cleared = self._table.clear_if_filled()
        with tf.control_dependencies([cleared]):
            return self._ops.dynamic_policy(self.handle, unique, counts, rows, layer)

    def export(self):
        """`(keys, rows)` held by the index (rebuilt first if out of date)."""
        row_keys, rows_in_use, steps = self._state
        return self._ops.key_index_export(self.handle, row_keys, tf.convert_to_tensor(rows_in_use.value),
                                          tf.convert_to_tensor(steps.value))

    def reset(self):
        """Makes the next kernel rebuild the index from the variables."""
        with tf.init_scope():
            self._ops.key_index_reset(self.handle)


def tf_index_update(table: KeyToRow, removed_keys, new_keys, new_rows):
    """The TF path's counterpart of `NativeIndex.update`: the table's remove, then insert."""
    with tf.control_dependencies([table.remove(removed_keys)]):
        return table.insert(new_keys, new_rows)
