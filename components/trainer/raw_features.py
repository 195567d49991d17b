"""Raw Criteo logs -> the features the preprocess writes, in TensorFlow ops.

The serving signatures use this so that clients send raw logs. The rules are
the preprocess contract (DESIGN.md 4.1), field by field:

  I1..I13  stripped; "" -> 0.0; else Python's int() of the text, n,
           -> float32(log1p(float64(n))). int() accepts a sign, any Unicode
           decimal digits and single underscores between digits, so "+5",
           "1_000", "٣", "-0" and "-4" are integers; "1.5", "0x10" are not.
           A negative n follows the metadata's `negative_counts` policy:
           "clamp" -> 0 (the default of preprocess), "reject" -> refused
           (metadata written before the policy existed: "reject", what that
           preprocess did).
  C1..C26  stripped; "" -> id 0; else, in hash mode with N buckets,
           1 + to_hash_bucket_fast(value, N - 1) (FarmHash64), and in the
           vocabulary modes the line number k of DIR/vocab/cat_i.txt holding
           the value (unseen -> 0, the OOV id); in fingerprint mode
           (`--hash-buckets 0`) the value's FarmHash Fingerprint64 as a
           signed int64 (`tf.fingerprint`'s 8 bytes, bitcast), missing -> 0.
  bag C<i> (metadata's multi_hot_keys): the stripped field split at the
           stored separator (a raw tf.Example: its bytes_list values), each
           element stripped, empty ones dropped, the first max_bag_length
           kept, each given its id as above: a tf.RaggedTensor [B, (n)]
           int64 (see raw_bags.py and components/preprocess/bags.py).

"Stripped" means Python's str.strip(): Unicode whitespace, not only ASCII.
A malformed input raises tf.errors.InvalidArgumentError whose message names
the problem, the field and the row of the batch; it never yields features.
The problems are those of components/preprocess/reasons.py, worded as the
preprocess words its dead letters, and the first one is reported in the
same order (bytes, field count, then each count I1..I13 in turn).
Everything runs eagerly as well as inside a tf.function.
"""

from __future__ import annotations

import functools
import unicodedata

import tensorflow as tf

from components.preprocess import reasons
from components.preprocess.reasons import SHOWN_CHARS
from components.preprocess.metadata import RAW_CATEGORICAL, RAW_DENSE, VOCAB_DIR, Metadata, vocab_file
from components.preprocess.rows import NEGATIVE_COUNT_POLICIES
from components.trainer import raw_bags

# The policy of metadata written before preprocess had --negative-counts: it rejected negative counts.
LEGACY_NEGATIVE_COUNTS = "reject"

HASH_MODE = "hash"
FINGERPRINT_MODE = "fingerprint"
VOCABULARY_MODES = ("top_n", "min_frequency")
# Criteo's test logs come without the label column.
TSV_FIELDS = (1 + len(RAW_DENSE) + len(RAW_CATEGORICAL), len(RAW_DENSE) + len(RAW_CATEGORICAL))

# The characters for which str.isspace() is true, as an RE2 class.
_WHITESPACE = r"[\t-\r\x{1c}-\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
_STRIP = f"^{_WHITESPACE}+|{_WHITESPACE}+$"


@functools.cache
def decimal_zeros() -> tuple[int, ...]:
    """Code points of the Unicode digit zeros; each starts a run of ten digits 0..9."""
    return tuple(c for c in range(0x110000) if unicodedata.decimal(chr(c), -1) == 0)


def _count_pattern() -> str:
    digit = "[" + "".join(f"\\x{{{z:x}}}-\\x{{{z + 9:x}}}" for z in decimal_zeros()) + "]"
    return f"[+-]?{digit}(_?{digit})*"



def strip(text: tf.Tensor) -> tf.Tensor:
    return tf.strings.regex_replace(text, _STRIP, "")


def is_utf8(text: tf.Tensor) -> tf.Tensor:
    return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace") == text


def check(ok: tf.Tensor, values: tf.Tensor, names, reason: str, describe=None):
    """Raises InvalidArgumentError "{reason} in {name}: {detail} (row r of the batch)" unless all `ok`.

    `ok` and `values` are [B, F]; `names` the F field names; `describe` turns
    the first failing value into the detail (default: its first 40 characters).
    """
    flat_bad = tf.reshape(tf.logical_not(ok), [-1])
    # A True sentinel keeps argmax defined on an empty batch, where the check passes anyway.
    index = tf.argmax(tf.concat([flat_bad, [True]], 0), output_type=tf.int64)
    width = tf.cast(len(names), tf.int64)
    flat = tf.reshape(values, [-1])
    value = tf.gather(tf.concat([flat, tf.zeros([1], flat.dtype)], 0), index)
    detail = _shown(value) if describe is None else describe(value)
    message = tf.strings.join([reason, " in ", tf.gather(tf.constant(names), index % width), ": ", detail,
                               " (row ", tf.strings.as_string(index // width), " of the batch)"])
    return tf.debugging.Assert(tf.reduce_all(ok), [message])


def _ascii_digits(text: tf.Tensor) -> tf.Tensor:
    """Maps every Unicode decimal digit of valid count texts to its ASCII digit."""
    zeros = tf.constant(decimal_zeros(), tf.int32)
    points = tf.strings.unicode_decode(tf.reshape(text, [-1]), "UTF-8")
    flat = points.flat_values
    zero = tf.gather(zeros, tf.searchsorted(zeros, flat, side="right") - 1)
    ascii = tf.strings.unicode_encode(points.with_flat_values(flat - zero + ord("0")), "UTF-8")
    return tf.reshape(ascii, tf.shape(text))


def first_fault(codes: tf.Tensor, values: tf.Tensor, names, faults):
    """Raises InvalidArgumentError for the first non-zero of `codes` in row-major order (row by row, field by
    field within a row, as the Python rules look for faults), with "{reason} in {name}: {detail} (row r of the
    batch)"; `faults` maps each code k >= 1 to (reason, describe) as in `check`, describe=None showing the value.
    """
    ok = tf.equal(codes, 0)
    flat_codes = tf.reshape(codes, [-1])
    index = tf.argmax(tf.concat([tf.not_equal(flat_codes, 0), [True]], 0), output_type=tf.int64)
    code = tf.gather(tf.concat([flat_codes, [0]], 0), index)
    flat = tf.reshape(values, [-1])
    value = tf.gather(tf.concat([flat, tf.zeros([1], flat.dtype)], 0), index)
    reason, detail = tf.constant(""), tf.constant("")
    for k, (text, describe) in faults.items():
        this = tf.equal(code, k)
        reason = tf.where(this, text, reason)
        detail = tf.where(this, _shown(value) if describe is None else describe(value), detail)
    width = tf.cast(len(names), tf.int64)
    message = tf.strings.join([reason, " in ", tf.gather(tf.constant(names), index % width), ": ", detail,
                               " (row ", tf.strings.as_string(index // width), " of the batch)"])
    return tf.debugging.Assert(tf.reduce_all(ok), [message])


def _shown(value: tf.Tensor) -> tf.Tensor:
    # Valid UTF-8 only: TensorFlow decodes the message as UTF-8 before raising it.
    text = tf.strings.unicode_transcode(value, "UTF-8", "UTF-8", errors="replace")
    return tf.strings.substr(text, 0, SHOWN_CHARS, unit="UTF8_CHAR")


def _digits(value: tf.Tensor) -> tf.Tensor:
    return tf.strings.join([tf.strings.as_string(tf.strings.length(value, unit="UTF8_CHAR")), " digits"])


def dense_from_text(text: tf.Tensor, clamp_negative: bool = False) -> tf.Tensor:
    """[B, 13] count texts (I1..I13) -> [B, 13] float32 log1p(count), 0 for missing (and clamped negatives).

    The first fault, row by row and field by field, is reported: non-integer, then negative (unless clamped),
    then too large for float64.
    """
    text = strip(text)
    missing = tf.equal(text, "")
    integer = tf.logical_or(missing, tf.strings.regex_full_match(text, _count_pattern()))
    digits = tf.where(missing | ~integer, "0", tf.strings.regex_replace(text, "[+_-]", ""))
    counts = tf.strings.to_number(_ascii_digits(digits), tf.float64)
    negative = (tf.strings.substr(text, 0, 1) == "-") & (counts > 0) & integer
    if clamp_negative:
        counts = tf.where(negative, tf.zeros_like(counts), counts)
        negative = tf.zeros_like(negative)
    codes = tf.where(~integer, 1, tf.where(negative, 2, tf.where(tf.math.is_finite(counts), 0, 3)))
    faults = {1: (reasons.NON_INTEGER, None), 2: (reasons.NEGATIVE, None), 3: (reasons.TOO_LARGE, _digits)}
    with tf.control_dependencies([first_fault(codes, text, RAW_DENSE, faults)]):
        return tf.cast(tf.math.log1p(counts), tf.float32)


def dense_from_counts(counts: tf.Tensor, present: tf.Tensor, clamp_negative: bool = False) -> tf.Tensor:
    """[B, 13] int64 counts and presence -> [B, 13] float32 log1p(count), 0 where absent (and clamped negatives)."""
    if clamp_negative:
        counts = tf.maximum(counts, 0)
    checks = [check(~present | (counts >= 0), counts, RAW_DENSE, reasons.NEGATIVE, tf.strings.as_string)]
    with tf.control_dependencies(checks):
        return tf.where(present, tf.cast(tf.math.log1p(tf.cast(counts, tf.float64)), tf.float32), 0.0)


def _single_values(parsed: dict, names, default) -> tuple[tf.Tensor, tf.Tensor, list]:
    """Ragged features with 0 or 1 values each -> ([B, F] values, [B, F] presence, checks)."""
    lengths = tf.stack([parsed[name].row_lengths() for name in names], axis=1)
    values = tf.stack([parsed[name].to_tensor(default, shape=[None, 1])[:, 0] for name in names], axis=1)
    checks = [check(lengths <= 1, lengths, names, "more than one value",
                    lambda n: tf.strings.join([tf.strings.as_string(n), " values, expected 0 or 1"]))]
    return values, lengths == 1, checks


class RawFeatureTransform(tf.Module):
    """Raw TSV lines or raw tf.Examples -> {"dense": [B, 13] float32, "cat_i": [B] int64 (a bag key: a
    tf.RaggedTensor [B, (n)] int64)}.

    In the vocabulary modes each DIR/vocab/cat_i.txt becomes a
    tf.lookup.StaticHashTable initialized from the file (whole line -> line
    number + 1, default 0); TextFileInitializer tracks the file as a
    tf.saved_model.Asset, so a SavedModel holding this module carries copies
    of the vocabularies and no longer needs DIR.

    Args:
        metadata: the preprocess metadata (vocab_sizes, options["vocab_mode"],
            options["hash_buckets"] in hash mode).
        preprocess_dir: the directory holding metadata.json and vocab/; unused
            in hash mode.

    Raises ValueError when the metadata and the vocabulary files disagree.
    """

    def __init__(self, metadata: Metadata, preprocess_dir: str | None):
        super().__init__(name="raw_features")
        if metadata.num_dense != len(RAW_DENSE) or len(metadata.categorical_keys) != len(RAW_CATEGORICAL):
            raise ValueError(f"raw logs have {len(RAW_DENSE)} counts and {len(RAW_CATEGORICAL)} categorical fields; "
                             f"the metadata has {metadata.num_dense} and {len(metadata.categorical_keys)}")
        self._dense_key = metadata.dense_key
        self._keys = tuple(metadata.categorical_keys)
        self._caps = raw_bags.bag_caps(metadata)
        self._bag_names = {RAW_CATEGORICAL[self._keys.index(key)] for key in self._caps}
        self._separator = metadata.options.get("multi_hot_separator", raw_bags.DEFAULT_SEPARATOR)
        mode = metadata.options.get("vocab_mode")
        policy = metadata.options.get("negative_counts", LEGACY_NEGATIVE_COUNTS)
        if policy not in NEGATIVE_COUNT_POLICIES:
            raise ValueError(f"metadata options['negative_counts'] is {policy!r}; expected one of "
                             f"{NEGATIVE_COUNT_POLICIES}")
        self._clamp_negative = policy == "clamp"
        self._hash_buckets = None
        self._fingerprints = mode == FINGERPRINT_MODE
        self.tables = {}
        if self._fingerprints:
            if not metadata.fingerprint_ids:
                raise ValueError(f"metadata options['vocab_mode'] is {mode!r}, but its id_kind is {metadata.id_kind!r}")
        elif mode == HASH_MODE:
            self._hash_buckets = _hash_buckets(metadata)
        elif mode in VOCABULARY_MODES:
            if not preprocess_dir:
                raise ValueError(f"vocab_mode {mode!r} needs the preprocess directory that holds {VOCAB_DIR}/")
            for key in self._keys:
                table = _vocabulary_table(vocab_file(preprocess_dir, key), metadata.vocab_sizes[key] - 1)
                if table is not None:
                    self.tables[key] = table
        else:
            raise ValueError(f"metadata options['vocab_mode'] is {mode!r}; expected {HASH_MODE!r}, "
                             f"{FINGERPRINT_MODE!r} or one of {VOCABULARY_MODES}")

    def from_tsv(self, lines) -> dict[str, tf.Tensor]:
        """[B] TSV lines: 40 fields (label first, ignored) or 39 (no label)."""
        lines = tf.convert_to_tensor(lines, tf.string)
        column = lines[:, None]
        with tf.control_dependencies([check(is_utf8(column), column, ("line",), reasons.INVALID_UTF8.removesuffix(" in line"))]):
            fields = tf.strings.split(lines, "\t")
        count = fields.row_lengths()[:, None]
        ok = tf.reduce_any(tf.stack([count == n for n in TSV_FIELDS]), axis=0)
        expected = f" tab-separated fields, expected {TSV_FIELDS[0]} (label first) or {TSV_FIELDS[1]} (no label)"
        wrong_count = check(ok, count, ("line",), reasons.WRONG_FIELD_COUNT.removesuffix(" in line"),
                            lambda n: tf.strings.join([tf.strings.as_string(n), expected]))
        with tf.control_dependencies([wrong_count]):
            fields = fields[:, -TSV_FIELDS[1]:].to_tensor("", shape=[None, TSV_FIELDS[1]])
        values = strip(fields[:, len(RAW_DENSE):])
        columns = [raw_bags.split_field(values[:, i], self._separator) if name in self._bag_names else values[:, i]
                   for i, name in enumerate(RAW_CATEGORICAL)]
        return self._features(dense_from_text(fields[:, : len(RAW_DENSE)], self._clamp_negative), columns)

    def from_examples(self, serialized) -> dict[str, tf.Tensor]:
        """[B] serialized tf.Examples with I1..I13 int64 and C1..C26 bytes, 0 or 1 values each (0..n for a bag)."""
        spec = {name: tf.io.RaggedFeature(tf.int64) for name in RAW_DENSE}
        spec.update({name: tf.io.RaggedFeature(tf.string) for name in RAW_CATEGORICAL})
        parsed = tf.io.parse_example(serialized, spec)
        # One check after the other, in the order of components/preprocess/reasons.py: the bytes, then the
        # structure (like a line's field count), then the counts.
        raw_values = tf.stack([raw_bags.joined(parsed[name], self._separator) if name in self._bag_names
                               else parsed[name].to_tensor("", shape=[None, 1])[:, 0] for name in RAW_CATEGORICAL],
                              axis=1)
        one_hot = [name for name in RAW_CATEGORICAL if name not in self._bag_names]
        with tf.control_dependencies([check(is_utf8(raw_values), raw_values, RAW_CATEGORICAL, "invalid UTF-8")]):
            counts, present, checks = _single_values(parsed, RAW_DENSE, tf.constant(0, tf.int64))
            values, _, more = _single_values(parsed, one_hot, "")
        with tf.control_dependencies(checks + more):
            dense = dense_from_counts(counts, present, self._clamp_negative)
            values = strip(values)
            columns = [parsed[name] if name in self._bag_names else values[:, one_hot.index(name)]
                       for name in RAW_CATEGORICAL]
        return self._features(dense, columns)

    def _ids(self, i: int, key: str, values: tf.Tensor) -> tf.Tensor:
        """Ids of the (stripped, non-missing) values of feature i, by the hash or vocabulary rule."""
        if self._fingerprints:
            return fingerprint_keys(values)
        if self._hash_buckets is not None:
            return 1 + tf.strings.to_hash_bucket_fast(values, self._hash_buckets[i] - 1)
        if key in self.tables:
            return self.tables[key].lookup(values)
        return tf.zeros_like(values, tf.int64)

    def _features(self, dense: tf.Tensor, columns: list) -> dict:
        """`columns[i]`: [B] stripped values of a one-hot feature, [B, (n)] raw elements of a bag."""
        features = {self._dense_key: dense}
        for i, (key, column) in enumerate(zip(self._keys, columns)):
            ids_of = functools.partial(self._ids, i, key)
            if key in self._caps:
                features[key] = raw_bags.bag_ids(column, self._caps[key], strip, ids_of)
            else:
                features[key] = tf.where(tf.equal(column, ""), tf.constant(0, tf.int64), ids_of(column))
        return features


def fingerprint_keys(values: tf.Tensor) -> tf.Tensor:
    """int64 FarmHash Fingerprint64 of each string (any shape), the bits of preprocess's `fingerprint_ids`.

    `tf.fingerprint` gives each element of a rank-1 string tensor its
    Fingerprint64 as 8 little-endian bytes; the bitcast reads them back as
    one int64 (little-endian hosts, which TensorFlow's CPUs and GPUs are).
    """
    flat = tf.reshape(values, [-1])
    keys = tf.bitcast(tf.fingerprint(flat, method="farmhash64"), tf.int64)
    return tf.reshape(keys, tf.shape(values))


def _hash_buckets(metadata: Metadata) -> list[int]:
    buckets = metadata.options.get("hash_buckets")
    sizes = [metadata.vocab_sizes[key] for key in metadata.categorical_keys]
    if not isinstance(buckets, list) or buckets != sizes:
        raise ValueError(f"hash mode: options['hash_buckets'] {buckets!r} must list the vocab_sizes {sizes}")
    if min(buckets) < 2:
        raise ValueError(f"hash mode needs at least 2 buckets per feature (id 0 is missing), got {buckets}")
    return buckets


def _count_lines(path: str) -> int:
    lines, last = 0, b"\n"
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def _vocabulary_table(path: str, lines: int) -> tf.lookup.StaticHashTable | None:
    """Value on line k -> k, anything else -> 0; None for an empty vocabulary (every id is 0)."""
    if not tf.io.gfile.exists(path):
        raise ValueError(f"no vocabulary file at {path}; the preprocess output is incomplete")
    found = _count_lines(path)
    if found != lines:
        raise ValueError(f"{path} has {found} lines, but metadata.json's vocab size {lines + 1} says {lines} "
                         "(lines + 1, id 0 being missing/OOV)")
    if lines == 0:
        return None
    initializer = tf.lookup.TextFileInitializer(
        path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        vocab_size=lines, value_index_offset=1)
    return tf.lookup.StaticHashTable(initializer, default_value=0)
