"""Reading a prepared TFDS dataset as raw Criteo rows.

The dataset's features must be named like the Criteo columns: `label`,
`I1`..`I13` and `C1`..`C26` (integers or strings; for strings "" is missing);
a bag column (`--multi-hot-columns`) may be a `tfds.features.Sequence` of
strings, whose elements arrive as a tuple (or a string holding elements
split at the separator, as in text input).
Examples arrive in `LineBatch`es (see sources.py) with `source` =
"tfds:<name>/<split>", line numbers = 1-based positions in the split, and
each row the 40 values as strings, so it goes through the same validation
as a text row. The dataset is looked up with `tfds.builder(name, data_dir=...)`,
which also finds a dataset prepared in `data_dir` whose builder class is not
importable by the worker.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from components.preprocess import metadata as md
from components.preprocess.bags import BagLayout


def _builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # tfds raises several types (DatasetNotFoundError, FileNotFoundError, ...)
        raise ValueError(f"unknown or unprepared TFDS dataset {name!r} (data_dir={data_dir!r}): {err}") from None


def check_tfds_dataset(name: str, data_dir: str | None, split: str, bags: BagLayout = BagLayout()) -> None:
    """Raises ValueError when the dataset, its split or its Criteo columns are missing, or when a column that is
    not a bag column is a sequence."""
    builder = _builder(name, data_dir)
    splits = builder.info.splits
    if not splits:
        raise ValueError(f"TFDS dataset {name!r} is not prepared in {data_dir!r}; run download_and_prepare first")
    for part in split.split("+"):
        base = part.split("[")[0]
        if base not in splits:
            raise ValueError(f"TFDS dataset {name!r} has no split {base!r}; available: {sorted(splits)}")
    missing = [col for col in md.RAW_COLUMNS if col not in builder.info.features]
    if missing:
        raise ValueError(f"TFDS dataset {name!r} lacks features {missing}; expected {list(md.RAW_COLUMNS)}")
    import tensorflow_datasets as tfds

    sequences = [col for col in md.RAW_COLUMNS
                 if isinstance(builder.info.features[col], tfds.features.Sequence) and col not in bags.raw_names]
    if sequences:
        raise ValueError(f"TFDS dataset {name!r} has sequence features {sequences} that are not bag columns; name "
                         f"them in --multi-hot-columns (bag columns now: {','.join(bags.raw_names) or 'none'})")


def _as_text(value) -> str | tuple[str, ...]:
    if isinstance(value, np.ndarray) and value.ndim:  # a sequence feature: a bag's elements
        return tuple(_as_text(v) for v in value.tolist())
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if hasattr(value, "item"):
        value = value.item()
    return value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else str(value)


class ReadTfdsExamplesFn(beam.DoFn):
    """split -> LineBatches whose lines are tuples of 40 field strings; a new shard every `rows_per_shard` rows."""

    def __init__(self, name: str, data_dir: str | None, batch_rows: int, rows_per_shard: int):
        self._name = name
        self._data_dir = data_dir
        self._batch_rows = batch_rows
        self._rows_per_shard = max(1, rows_per_shard)

    def process(self, split: str, *unused_side_inputs):
        import tensorflow_datasets as tfds

        from components.preprocess.sources import LineBatch

        dataset = _builder(self._name, self._data_dir).as_dataset(split=split, shuffle_files=False)
        source = f"tfds:{self._name}/{split}"
        rows, first = [], 1
        for index, example in enumerate(tfds.as_numpy(dataset), start=1):
            if not rows:
                first = index
            rows.append(tuple(_as_text(example[col]) for col in md.RAW_COLUMNS))
            if len(rows) == self._batch_rows or index % self._rows_per_shard == 0:
                yield LineBatch(source, f"00000-{(first - 1) // self._rows_per_shard:05d}", first, rows)
                rows = []
        if rows:
            yield LineBatch(source, f"00000-{(first - 1) // self._rows_per_shard:05d}", first, rows)


def tfds_num_examples(name: str, data_dir: str | None, split: str) -> int:
    """Rows in the split (as recorded by the builder), for sizing the output shards."""
    return int(_builder(name, data_dir).info.splits[split].num_examples)


class ReadTfdsRows(beam.PTransform):
    """A TFDS dataset split -> LineBatches of (field strings) rows; `after` delays the read (see sources.py)."""

    def __init__(self, name: str, data_dir: str | None = None, split: str = "train", *, batch_rows: int = 4096,
                 rows_per_shard: int = 1 << 62, after=()):
        super().__init__()
        self._fn = ReadTfdsExamplesFn(name, data_dir, batch_rows, rows_per_shard)
        self._split = split
        self._after = list(after)

    def expand(self, pbegin):
        return pbegin | "Split" >> beam.Create([self._split]) | "ReadTfds" >> beam.ParDo(self._fn, *self._after)
