"""The refusal reasons one raw row can get, shared by preprocess (dead letters) and serving (errors).

A refusal reads "REASON: DETAIL". REASON names the fault and, for a field, the field ("non-integer count in
I3"); it is the same on every path for the same row: preprocess in every mode, `serve_tsv`, `serving_default`
and `embedopt predict`. DETAIL shows the value (its first SHOWN_CHARS characters, stripped) and may say more
where a path knows more (the byte offset of invalid UTF-8, the field counts a path accepts).
Faults are looked for in one order, the first one found is reported: the bytes (UTF-8), the number of fields,
the label (preprocess only: serving ignores it), then the counts I1..I13 in order, each checked for being an
integer, then negative (under the "reject" policy), then too large for float64.
"""

INVALID_UTF8 = "invalid UTF-8 in line"
MALFORMED_CSV = "malformed CSV"
WRONG_FIELD_COUNT = "wrong field count in line"
BAD_LABEL = "label not 0/1"
NON_INTEGER = "non-integer count"
NEGATIVE = "negative count"
TOO_LARGE = "count too large"
SHOWN_CHARS = 40


def in_field(reason: str, field: str) -> str:
    return f"{reason} in {field}"


def shown(text: str) -> str:
    return text[:SHOWN_CHARS]
