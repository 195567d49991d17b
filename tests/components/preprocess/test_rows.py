import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from components.preprocess.columns import ParseAndValidate
from components.preprocess.rows import RowError, parse_fields
from components.preprocess.sources import LineBatch

GOOD = ["1", "0", "", "5"] + [""] * 10 + ["a1"] + [""] * 25


def test_parse_fields_log1p_and_missing():
    label, dense, cats = parse_fields(GOOD)
    assert label == 1
    assert dense[:3] == (0.0, 0.0, pytest.approx(1.791759469228055))  # log1p(5) by hand
    assert cats[0] == "a1" and cats[1] == ""


@pytest.mark.parametrize(
    "fields, reason",
    [
        (GOOD[:39], "wrong field count in line: 39 tab-separated fields, expected 40"),
        (["x"] + GOOD[1:], "label not 0/1"),
        (GOOD[:1] + ["1.5"] + GOOD[2:], "non-integer count in I1"),
        (GOOD[:2] + ["-3"] + GOOD[3:], "negative count in I2"),
        (GOOD[:3] + ["9" * 400] + GOOD[4:], "count too large in I3: 400 digits"),
        (GOOD[:3] + ["9" * 5000] + GOOD[4:], "count too large in I3: 5000 digits"),
    ],
)
def test_parse_fields_rejects(fields, reason):
    with pytest.raises(RowError, match=reason):
        parse_fields(fields, "reject")


def test_parse_and_validate_tags_dead_letter():
    good = "\t".join(GOOD).encode()
    batch = LineBatch("f", "00000-00000", 1, [good, b"0\t1", good[:-2] + b"\xff"])
    with TestPipeline() as p:
        out = p | beam.Create([batch]) | ParseAndValidate("tsv", eval_fraction=0.0)
        rows = out["rows"] | beam.FlatMap(lambda b: zip(b.label.tolist(), b.categorical[0].to_pylist(), b.is_eval.tolist()))
        assert_that(rows, equal_to([(1, "a1", False)]), label="rows")
        assert_that(
            out["dead_letter"] | beam.Map(lambda d: (d["line_number"], d["raw_encoding"], d["reason"].split(":")[0])),
            equal_to([(2, "text", "wrong field count in line"), (3, "base64", "invalid UTF-8 in line")]),
            label="dead",
        )


def test_eval_fraction_one_sends_everything_to_eval():
    good = "\t".join(GOOD).encode()
    with TestPipeline() as p:
        batch = LineBatch("f", "00000-00000", 1, [good + str(i).encode() for i in range(5)])
        out = p | beam.Create([batch]) | ParseAndValidate("tsv", 1.0)
        assert_that(out["rows"] | beam.FlatMap(lambda b: b.is_eval.tolist()), equal_to([True] * 5))
