"""`embedopt synth`: Criteo-format TSV with a planted logistic ground truth.

Rows are generated and formatted in NumPy chunks, so memory is bounded by
the chunk size, not by --rows. Beside FILE it writes FILE.meta.json with the
generator's parameters, the positive rate and the Bayes-optimal AUC (the AUC
of the true click probabilities against the sampled labels), so a trained
model can be judged against the best possible. Same seed, same bytes.

With `--multi-hot mlperf` the features of MLPerf's materialized multi-hot
Criteo set hold a bag of values (sizes MLPERF_BAG_SIZES; a feature of size
1 stays one value), written as one field of comma-separated values; the
.meta.json names those columns, and `embedopt preprocess` reads them as bags
without being told (`multi_hot_columns`, `multi_hot_separator`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from components.preprocess.synth_truth import (DEFAULT_VOCAB_SIZES, MLPERF_BAG_SIZES, GroundTruth, StreamingStats,
                                               SynthConfig, hex_ids)

from components.cli import HelpFormatter

PROG = "embedopt synth"
CHUNK_ROWS = 100_000
FORMAT_ROWS = 10_000  # rows formatted at once: a bag row is ~2 KB, so the byte matrix stays ~20 MB
MULTI_HOT_PRESETS = {"mlperf": MLPERF_BAG_SIZES}
BAG_SEPARATOR = b","
_DIGITS = 10  # counts are capped below 10**10
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _digits(values: np.ndarray) -> np.ndarray:
    """[n] non-negative ints (-1 = missing) -> [n, 10] ASCII digits, 0 bytes for padding."""
    powers = 10 ** np.arange(_DIGITS - 1, -1, -1, dtype=np.int64)
    v = np.maximum(values, 0)[:, None]
    out = (48 + (v // powers) % 10).astype(np.uint8)
    keep = (v >= powers) | (powers == 1)
    out[~keep | (values[:, None] < 0)] = 0
    return out


def format_rows(truth: GroundTruth, chunk) -> bytes:
    """Chunk -> TSV bytes, FORMAT_ROWS rows at a time."""
    return b"".join(_format_slice(truth, chunk, begin, min(begin + FORMAT_ROWS, len(chunk.label)))
                    for begin in range(0, len(chunk.label), FORMAT_ROWS))


def _format_slice(truth: GroundTruth, chunk, begin: int, end: int) -> bytes:
    """Rows begin:end -> TSV bytes. Fields sit in fixed-width slots padded with NUL bytes, which are then removed;
    a bag's values are separated by BAG_SEPARATOR."""
    n = end - begin
    sizes = truth.bag_sizes
    width = 1 + 13 * (1 + _DIGITS) + sum(1 + 9 * k for k in sizes) + 1
    out = np.zeros((n, width), dtype=np.uint8)
    out[:, 0] = 48 + chunk.label[begin:end]
    col = 1
    for j in range(13):
        out[:, col] = 9
        out[:, col + 1 : col + 1 + _DIGITS] = _digits(np.minimum(chunk.counts[begin:end, j], 10**_DIGITS - 1))
        col += 1 + _DIGITS
    shifts = np.arange(28, -4, -4, dtype=np.uint32)
    for f, size in enumerate(sizes):
        ids = chunk.cat_ids[begin:end, truth.offsets[f] : truth.offsets[f + 1]]
        out[:, col] = 9
        slots = np.zeros((n, size, 9), np.uint8)  # 8 hex digits and a separator (none after the last value)
        slots[:, :, :8] = _HEX[(hex_ids(f, np.maximum(ids, 0))[:, :, None] >> shifts) & np.uint32(15)]
        slots[:, :-1, 8] = BAG_SEPARATOR[0]
        slots[ids[:, 0] < 0] = 0
        out[:, col + 1 : col + 1 + 9 * size] = slots.reshape(n, 9 * size)
        col += 1 + 9 * size
    out[:, col] = 10
    flat = out.ravel()
    return flat[flat != 0].tobytes()


def generate(config: SynthConfig, rows: int, output: str, progress: bool = True) -> dict:
    """Writes `rows` rows to `output` and `output + ".meta.json"`; returns the metadata dict."""
    start = time.monotonic()
    truth = GroundTruth(config)
    stats = StreamingStats()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "wb") as f, tqdm(total=rows, unit="rows", file=sys.stderr, disable=not progress) as bar:
        for index, begin in enumerate(range(0, rows, CHUNK_ROWS)):
            chunk = truth.sample(min(CHUNK_ROWS, rows - begin), chunk_index=index)
            stats.update(chunk)
            f.write(format_rows(truth, chunk))
            bar.update(len(chunk.label))
    positives = int(stats.pos.sum())
    config_record = dataclasses.asdict(config)
    bags = {}
    if config.bag_sizes is None:
        del config_record["bag_sizes"]  # a one-hot run's .meta.json stays as it was
    else:
        bags = {"bag_sizes": list(truth.bag_sizes), "multi_hot_separator": BAG_SEPARATOR.decode(),
                "multi_hot_columns": [f"C{f + 1}" for f, k in enumerate(truth.bag_sizes) if k > 1]}
    meta = {
        "generator": "embedopt synth",
        "config": config_record,
        **bags,
        "rows": rows,
        "chunk_rows": CHUNK_ROWS,
        "bias": truth.bias,
        "zipf_exponent": config.zipf_exponent,
        "vocab_sizes": list(config.vocab_sizes),
        "frequent_values_per_feature": truth.head_sizes,
        "categorical_missing_rates": [round(float(x), 6) for x in truth.cat_missing],
        "dense_missing_rates": [round(float(x), 6) for x in truth.dense_missing],
        "dense_weights": [float(x) for x in truth.dense_weights],
        "dense_log_mu": [float(x) for x in truth.dense_mu],
        "logit_variance": stats.variances(),
        "positive_rate": positives / rows if rows else float("nan"),
        "bayes_auc": stats.auc(),
        "bayes_auc_method": "Mann-Whitney on a 2^20-bin histogram of the true probabilities",
        "seconds": round(time.monotonic() - start, 3),
    }
    with open(output + ".meta.json", "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in meta.items() if k != "seconds"}, f, indent=2, sort_keys=True)
        f.write("\n")
    return meta


def _vocab_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 26
    if len(sizes) != 26 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected one or 26 comma-separated sizes >= 1, got {text!r}")
    return sizes


def _bag_sizes(text: str) -> tuple[int, ...]:
    if text in MULTI_HOT_PRESETS:
        return MULTI_HOT_PRESETS[text]
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 26 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected {' or '.join(MULTI_HOT_PRESETS)} or 26 comma-separated sizes >= 1, "
                                         f"got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    defaults = SynthConfig()
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--rows", type=int, required=True, help="number of rows to write")
    parser.add_argument("--output", required=True, help="TSV file to write; FILE.meta.json is written beside it")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed gives the same bytes (default: 0)")
    parser.add_argument("--vocab-sizes", type=_vocab_sizes, default=DEFAULT_VOCAB_SIZES,
                        help="possible values per categorical feature: one N or 26 comma-separated values "
                        "(default: Criteo-like, up to 2,000,000)")
    parser.add_argument("--zipf-exponent", type=float, default=defaults.zipf_exponent,
                        help="Zipf exponent of the categorical values")
    parser.add_argument("--positive-rate", type=float, default=defaults.target_positive_rate,
                        help="target fraction of label 1")
    parser.add_argument("--multi-hot", type=_bag_sizes, metavar="mlperf|K[,K...]",
                        help="bags of values: 'mlperf' for the bag sizes of MLPerf's materialized multi-hot Criteo "
                        f"set ({','.join(map(str, MLPERF_BAG_SIZES))}), or 26 sizes; a feature of size K > 1 is "
                        "written as K comma-separated values, and FILE.meta.json names those columns so that "
                        "`embedopt preprocess` reads them as bags (default: one value per feature)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.rows < 1:
        print(f"{PROG}: --rows must be >= 1, got {args.rows}", file=sys.stderr)
        return 2
    try:
        config = SynthConfig(seed=args.seed, vocab_sizes=args.vocab_sizes, zipf_exponent=args.zipf_exponent,
                             target_positive_rate=args.positive_rate, bag_sizes=args.multi_hot)
    except ValueError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    meta = generate(config, args.rows, args.output, progress=not args.no_progress and args.rows >= CHUNK_ROWS)
    print(f"{PROG}: wrote {args.rows} rows to {args.output} ({args.rows / meta['seconds']:.0f} rows/s); "
          f"positive_rate={meta['positive_rate']:.4f} bayes_auc={meta['bayes_auc']:.4f} "
          f"frequent_and_dense_fraction={meta['logit_variance']['frequent_and_dense_fraction']:.3f}")
    return 0
