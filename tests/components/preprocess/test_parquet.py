"""--format parquet: the same rows as TSV give the same examples, splits and vocabularies; schema errors are clear.

The Parquet files are written here with pyarrow from TSV lines (null for an empty field, a list of the raw
elements for a bag field); the expectations are the TSV run's output and bag_reference.py.
"""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.preprocess import pipeline
from tests.components.preprocess import bag_reference as ref
from tests.components.preprocess.golden import canonical
from tests.components.preprocess.helpers import dead_letters

NAMES = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]


def to_parquet(lines, path, bag_columns=(), row_group_size=16, types=None):
    rows = [line.split("\t") for line in lines]
    columns = {"label": pa.array([int(r[0]) for r in rows], pa.int64())}
    for i in range(1, 14):
        columns[f"I{i}"] = pa.array([int(r[i]) if r[i] else None for r in rows], pa.int64())
    for f in range(26):
        name, values = f"C{f + 1}", [r[14 + f] for r in rows]
        if name in bag_columns:
            columns[name] = pa.array([v.split(",") if v else None for v in values], pa.list_(pa.string()))
        else:
            columns[name] = pa.array([v or None for v in values], pa.string())
    for name, column in (types or {}).items():
        columns[name] = column
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def _without_source(output):
    for record in output["dead_letter"]:
        record.pop("source")
    return output


@pytest.mark.parametrize("flags", [["--hash-buckets", "7"], ["--min-frequency", "1"]])
def test_parquet_equals_tsv(tmp_path, flags):
    lines = ref.bag_lines(rows=120)[:-1]  # the 39-field line has no Parquet form
    (tmp_path / "in.tsv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    to_parquet(lines, str(tmp_path / "in.parquet"), bag_columns=("C3", "C21"))
    common = ["--multi-hot-columns", "C3,C21", "--max-bag-length", "C21:5", "--eval-fraction", "0.3", "--no-progress",
              *flags]
    assert pipeline.main(["--input", str(tmp_path / "in.tsv"), "--output", str(tmp_path / "t"), *common]) == 0
    assert pipeline.main(["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "p"), "--format",
                          "parquet", "--num-shards", "3", *common]) == 0
    tsv, parquet = _without_source(canonical(str(tmp_path / "t"))), _without_source(canonical(str(tmp_path / "p")))
    assert parquet == tsv
    assert parquet["row_counts"]["eval"] > 0 and parquet["dead_letter_count"] == 1
    assert len(list((tmp_path / "p" / "Split-train").iterdir())) > 1  # row groups cut into several shards


def test_parquet_refusals(tmp_path):
    """Invalid UTF-8 in a binary column, a null label and a negative count (reject) are dead letters with the
    text reasons; rows + dead letters = input rows."""
    lines = ref.bag_lines(rows=10)[:-2]
    c5 = [b"ok"] * len(lines)
    c5[3] = b"\xff\xfe"
    counts = [1] * len(lines)
    counts[5] = -2
    labels = [int(line[0]) for line in lines]
    path = str(tmp_path / "in.parquet")
    to_parquet(lines, path, ("C3",), types={"C5": pa.array(c5, pa.binary()), "I2": pa.array(counts, pa.int32()),
                                            "label": pa.array([None if i == 7 else v for i, v in enumerate(labels)],
                                                              pa.int8())})
    out = str(tmp_path / "out")
    assert pipeline.main(["--input", path, "--output", out, "--format", "parquet", "--multi-hot-columns", "C3",
                          "--hash-buckets", "7", "--negative-counts", "reject", "--no-progress"]) == 0
    reasons = {d["line_number"]: d["reason"] for d in dead_letters(out)}
    assert sorted(reasons) == [4, 6, 8]
    assert reasons[4].startswith("invalid UTF-8 in line") and "C5" in reasons[4]
    assert reasons[6] == "negative count in I2: -2"
    assert reasons[8].startswith("label not 0/1")
    assert sum(canonical(out)["row_counts"].values()) == len(lines) - 3


@pytest.mark.parametrize("column, array, message", [
    ("C5", pa.array([1] * 8, pa.int64()), "column 'C5' has type int64; expected a string or binary column"),
    ("C3", pa.array(["a"] * 8, pa.string()), "column 'C3' has type string; expected a list of string"),
    ("C7", pa.array([["a"]] * 8, pa.list_(pa.string())), "must be named in --multi-hot-columns"),
    ("I4", pa.array(["1"] * 8, pa.string()), "column 'I4' has type string; expected an integer column"),
])
def test_wrong_schema_is_a_clear_error(tmp_path, capsys, column, array, message):
    lines = ref.bag_lines(rows=8)[:-2]
    path = str(tmp_path / "in.parquet")
    to_parquet(lines, path, ("C3",), types={column: array})
    code = pipeline.main(["--input", path, "--output", str(tmp_path / "o"), "--format", "parquet",
                          "--multi-hot-columns", "C3", "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err
